"""``python -m pyro_vae.compare``: the compare command (pyro_vae/cli/compare.py), which runs
:mod:`pyro_vae.comparison`."""

if __name__ == "__main__":
    from .cli import run_main
    from .cli.compare import main

    run_main(main)
