"""Recipes: experiments that fix their settings and write ordinary run directories.

paper.py          Burda et al.'s benchmark recipe, its continuations, learning curves and figure.
latent_sweep.py   Kingma & Welling's Figure 2: train and test ELBO against latent size.
manifold.py       Kingma & Welling's Figure 4: the learned 2-D manifold.

Each recipe takes its settings as a dataclass (the experiments command makes them from its
flags) and raises ValueError for bad input. A recipe run again over an earlier run reuses it
only with the same settings (``existing_run``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


def existing_run(run_dir: Path, config, may_change) -> dict | None:
    """The checkpoint of the run a recipe finds in ``run_dir`` (None if there is none yet), after
    refusing it if it was made with other settings than ``config`` asks for."""
    from .. import runs
    from ..trainer import refuse_changed_settings

    path = run_dir / runs.CHECKPOINT_FILE
    if not path.exists():
        return None
    state = runs.load_checkpoint(path)
    refuse_changed_settings(run_dir, state["config"], config.to_dict(), may_change)
    if state["epoch"] > config.epochs:
        raise ValueError(f"{run_dir} has trained {state['epoch']} epochs, more than the {config.epochs} asked "
                         "for; ask for at least that many, or use another output folder")
    return state


def train_config_from(settings, **overrides):
    """The TrainConfig of a recipe's run: the settings it shares with TrainConfig (those not None),
    ``overrides`` over them."""
    from ..trainer import TrainConfig

    shared = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
              if f.name in TrainConfig.__dataclass_fields__ and getattr(settings, f.name) is not None}
    return TrainConfig(**{**shared, **overrides})


def score_path_for(run_dir: Path, eval_samples: int, device: str) -> Path:
    """Where train_and_report writes a run's test score at the default settings."""
    from ..evaluation import score_path
    from ..trainer import resolve_device

    return score_path(run_dir, eval_samples, resolve_device(device).type)
