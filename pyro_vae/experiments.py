"""``python -m pyro_vae.experiments``: the command lives in pyro_vae/cli/experiments.py, the
recipes it runs in pyro_vae/recipes/."""

if __name__ == "__main__":
    from .cli import run_main
    from .cli.experiments import main

    run_main(main)
