"""TensorBoard event files, for ``--tensorboard``: a run's curves and pictures, an estimator
study's gradient SNRs. TensorBoard is optional (``pip install pyro-vae[tensorboard]``);
:func:`summary_writer` says so in one ValueError when it is missing."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import make_grid

from .fit import Callback, FitState

SCALARS = {"train_elbo": "elbo/train", "valid_elbo": "elbo/valid", "test_elbo": "elbo/test", "lr": "learning_rate"}


def summary_writer(log_dir: str | Path):
    """A ``torch.utils.tensorboard.SummaryWriter`` writing into ``log_dir``."""
    try:
        import tensorboard  # noqa: F401  (torch's writer needs the package)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("TensorBoard logging needs the tensorboard package: "
                         "pip install 'pyro-vae[tensorboard]' (or pip install tensorboard)") from None
    return SummaryWriter(str(log_dir))


def check_tensorboard() -> None:
    """Raise the one-line ValueError of :func:`summary_writer` before any work, if it would."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        summary_writer("unused")


def digit_grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """(N, 784) intensities as one (3, H, W) image of 28x28 digits."""
    return make_grid(images.detach().reshape(-1, 1, 28, 28).cpu(), nrow=nrow, padding=2, pad_value=1.0)


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
        from .plots import prior_draws

        if len(self.test_images) and state.history:
            images = self.test_images[:10]
            pairs = torch.cat([images, self.evaluated.reconstruct(images)])
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
