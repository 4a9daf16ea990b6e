"""``python -m pyro_vae.train``: the train command (pyro_vae/cli/train.py), which runs
:func:`pyro_vae.trainer.train_and_report`."""

if __name__ == "__main__":
    from .cli import run_main
    from .cli.train import main

    run_main(main)
