"""Figures of a run: learning curves, test reconstructions, prior samples."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from .model import VAE  # noqa: E402
from .seeds import forked_rng  # noqa: E402


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    """Lay out, write and close a matplotlib figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def run_title(config: dict) -> str:
    """A one-line description of a run for figure titles."""
    from .objectives import objective_label

    objective = objective_label(config["elbo"], config["num_particles"],
                                config.get("extra", {}).get("num_estimates", 1))
    from .model import MODELS

    net = MODELS[config.get("model", "vae")].describe(config)
    return f"{config['dataset']} ({config['binarize']}), {objective}, {net}"


PRIOR_SEED = 0  # prior_samples.png shows the same draws of z every time it is drawn


def digit_grid(images: torch.Tensor, nrow: int, padding: int = 2) -> torch.Tensor:
    """(N, D) pixel intensities of square images (D = 784: 28 x 28) as one (3, H, W) image,
    ``nrow`` to a row."""
    side = math.isqrt(images.shape[-1])
    if side * side != images.shape[-1]:
        raise ValueError(f"images of {images.shape[-1]} pixels are not square")
    return make_grid(images.detach().reshape(-1, 1, side, side).cpu(), nrow=nrow, padding=padding, pad_value=1.0)


def save_image_grid(images: torch.Tensor, path: Path, nrow: int, title: str | None = None) -> None:
    """(N, D) pixel intensities in [0, 1] as a grid of square images, each about 84 pixels wide."""
    grid = digit_grid(images, nrow)
    width = nrow * 0.6 + 0.3
    fig, ax = plt.subplots(figsize=(width, grid.shape[1] / grid.shape[2] * nrow * 0.6 + 0.5))
    ax.imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def prior_draws(vae: VAE, num: int = 64) -> torch.Tensor:
    """Decoder means of ``num`` draws of z from the prior, the same draws at every call (a fixed
    seed, on a forked random stream that leaves the caller's as it was)."""
    device = next(vae.parameters()).device
    with forked_rng(device):
        torch.manual_seed(PRIOR_SEED)
        return vae.sample_images(num)


def reconstruction_pairs(vae: VAE, images: torch.Tensor) -> torch.Tensor:
    """The images, then their reconstructions (decoder mean at the encoder mean): two rows."""
    return torch.cat([images, vae.reconstruct(images)])


def plot_reconstructions(vae: VAE, images: torch.Tensor, path: Path, num: int = 10) -> None:
    images = images[:num]
    save_image_grid(reconstruction_pairs(vae, images), path, nrow=len(images),
                    title="test images (top) and reconstructions")


def plot_prior_samples(vae: VAE, path: Path, num: int = 64) -> None:
    save_image_grid(prior_draws(vae, num), path, nrow=8, title=f"decoder means for z ~ p(z) (seed {PRIOR_SEED})")


def plot_learning_curves(history: Sequence[dict], path: Path, title: str = "") -> None:
    """The training objective's bound and the valid/test ELBO (nats per image) against training
    images seen, as Kingma & Welling's Fig. 2."""
    fig, ax = plt.subplots(figsize=(6, 4))
    seen = [row["images_seen"] for row in history]
    # train: the training objective's own bound (IWAE's, for iwae); valid and test: one-sample ELBOs
    for key, label in (("train_elbo", "train (the objective's bound)"), ("valid_elbo", "valid ELBO"),
                       ("test_elbo", "test ELBO")):
        values = [row[key] for row in history]
        if any(v == v for v in values):  # skip an all-NaN (empty) split
            ax.plot(seen, values, marker="o", markersize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("training images seen")
    ax.set_ylabel("bound (nats per image)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def draw_run_figures(vae: VAE, history: Sequence[dict], test_images: torch.Tensor,
                     run_dir: Path, title: str = "") -> list[Path]:
    """The standard figures of a run, written into ``run_dir``."""
    run_dir = Path(run_dir)
    paths = [run_dir / "learning_curves.png", run_dir / "reconstructions.png",
             run_dir / "prior_samples.png"]
    plot_learning_curves(history, paths[0], title)
    plot_reconstructions(vae, test_images, paths[1])
    plot_prior_samples(vae, paths[2])
    return paths
