"""Train, draw and score one run: ``train_and_report``, what ``python -m pyro_vae.train`` runs.

The command itself (flags, their checks, the config they make) is pyro_vae/cli/train.py.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from . import runs
from .evaluate import DEFAULT_IWAE_K
from .trainer import RESUMABLE_SETTINGS, TrainConfig, train


def train_and_report(config: TrainConfig, resume: bool = False, overwrite: bool = False,
                     progress: bool = True, dataset=None, may_change=RESUMABLE_SETTINGS,
                     iwae_k: int = DEFAULT_IWAE_K, eval_limit: int | None = None) -> dict:
    """Train, draw the run's figures, and score the test set by importance sampling (log p(x) with
    ``config.eval_samples`` samples, the IWAE_k bound with ``iwae_k`` and the ELBO from the same
    samples; only the first ``eval_limit`` test images if given), holding the run directory (one
    writer) from before the data is read to the end."""
    from .trainer import world_and_device

    world, _ = world_and_device(config.device)
    with runs.claim_run_dir(config.run_dir) if world.is_main else contextlib.nullcontext():
        return _train_and_report(config, world, resume, overwrite, progress, dataset, may_change, iwae_k,
                                 eval_limit)


def _train_and_report(config: TrainConfig, world, resume: bool, overwrite: bool, progress: bool,
                      dataset, may_change, iwae_k: int, eval_limit: int | None) -> dict:
    from .evaluate import evaluate_run, format_summary
    from .plots import draw_run_figures, run_title

    # train checks the run directory and a resumed run's settings before it reads the data
    trained = train(config, dataset, resume=resume, overwrite=overwrite,
                    progress=progress and world.is_main, may_change=may_change)
    history, dataset = trained.history, trained.dataset
    say = print if world.is_main else (lambda *_: None)
    if world.is_main:
        figures = draw_run_figures(trained.model, history, dataset.test.images, Path(config.run_dir),
                                   run_title(config.to_dict()))
        say(f"figures: {', '.join(str(f) for f in figures)}")
    report = None
    if config.eval_samples:  # the model in memory: no reload from disk to score it
        report = evaluate_run(config.run_dir, config.eval_samples, "test", config.device,
                              progress=progress and world.is_main, dataset=dataset, iwae_k=iwae_k,
                              limit=eval_limit, trained=(trained.model, config.to_dict()))
        say(format_summary(report))
    say(f"run directory: {config.run_dir}")
    return {"history": history, "eval": report}


if __name__ == "__main__":  # python -m pyro_vae.train
    from .cli import run_main
    from .cli.train import main

    run_main(main)
