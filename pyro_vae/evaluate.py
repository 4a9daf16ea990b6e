"""``python -m pyro_vae.evaluate``: the evaluate command (pyro_vae/cli/evaluate.py), which scores a
run by :mod:`pyro_vae.evaluation` (importance sampling) or :mod:`pyro_vae.evaluation_ais` (AIS, BDMC)."""

if __name__ == "__main__":
    from .cli import run_main
    from .cli.evaluate import main

    run_main(main)
