"""TensorBoard event files, for ``--tensorboard``: a run's curves and pictures, an estimator
study's gradient SNRs. TensorBoard is optional (``pip install pyro-vae[tensorboard]``);
:func:`summary_writer` says so in one ValueError when it is missing."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .fit import Callback, FitState

SCALARS = {"train_elbo": "elbo/train", "valid_elbo": "elbo/valid", "test_elbo": "elbo/test", "lr": "learning_rate"}


def check_tensorboard() -> None:
    """A one-line ValueError, before any work, if the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401  (torch's writer needs the package)
    except ImportError:
        raise ValueError("TensorBoard logging needs the tensorboard package: "
                         "pip install 'pyro-vae[tensorboard]' (or pip install tensorboard)") from None


def summary_writer(log_dir: str | Path):
    """A ``torch.utils.tensorboard.SummaryWriter`` writing into ``log_dir``."""
    check_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir))


class TensorBoardLog(Callback):
    """Each epoch's row (train, valid and test ELBO, learning rate) and its milliseconds per step;
    at the end, the test images above their reconstructions and decoder means of prior draws (the
    same seeded draws as prior_samples.png)."""

    def __init__(self, log_dir: str | Path, evaluated, test_images: torch.Tensor):
        self.writer = summary_writer(log_dir)
        self.evaluated, self.test_images = evaluated, test_images

    def on_epoch_end(self, state: FitState, row: dict) -> None:
        epoch = row["epoch"]
        for key, tag in SCALARS.items():
            if key in row and isinstance(row[key], (int, float)) and math.isfinite(row[key]):
                self.writer.add_scalar(tag, row[key], epoch)
        if state.step:
            self.writer.add_scalar("time/ms_per_step", 1e3 * row["epoch_seconds"] / state.step, epoch)
        self.writer.flush()

    def on_fit_end(self, state: FitState) -> None:
        from .plots import digit_grid, prior_draws, reconstruction_pairs

        if len(self.test_images) and state.history:
            images = self.test_images[:10]
            pairs = reconstruction_pairs(self.evaluated, images)
            self.writer.add_image("reconstructions", digit_grid(pairs, len(images)), state.history[-1]["epoch"])
            self.writer.add_image("prior_samples", digit_grid(prior_draws(self.evaluated), 8),
                                  state.history[-1]["epoch"])
        self.writer.close()


def log_snr(log_dir: str | Path, rows: list[dict]) -> None:
    """An estimator study's median gradient SNRs (and bound), one curve per estimator against the
    samples of z per image."""
    writer = summary_writer(log_dir)
    for row in rows:
        for group in ("encoder", "decoder"):
            writer.add_scalar(f"snr_{group}/{row['estimator']}", row[f"{group}_snr_median"], row["samples"])
        writer.add_scalar(f"bound/{row['estimator']}", row["bound_mean"], row["samples"])
    writer.close()
