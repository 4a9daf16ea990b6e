"""``python -m pyro_vae.paired A.json B.json``: the paired command (pyro_vae/cli/paired.py); the
statistics are in :mod:`pyro_vae.paired_scores`."""

if __name__ == "__main__":
    from .cli import run_main
    from .cli.paired import main

    run_main(main)
