"""Kingma & Welling's Figure 4: a J = 2 model (trained here, or an earlier run), its decoder means
over a grid of z made by the inverse Gaussian CDF of an evenly spaced grid in the unit square,
and the test set's latent means coloured by label."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import existing_run, train_config_from


def latent_grid(points_per_side: int) -> torch.Tensor:
    """(n*n, 2) latent points: Phi^-1 of the centres of an n x n grid of cells in (0, 1)^2.
    Rows run from high z_2 (top of the picture) to low, columns from low z_1 to high."""
    u = (torch.arange(points_per_side, dtype=torch.float64) + 0.5) / points_per_side
    z = torch.distributions.Normal(0.0, 1.0).icdf(u)
    z2, z1 = torch.meshgrid(z.flip(0), z, indexing="ij")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1).float()


@dataclass
class ManifoldSettings:
    """The manifold recipe: train a J = 2 seed model (or use ``run_dir``, a trained J = 2 run)
    and draw its manifold with ``grid_size`` images per side. The training settings apply only
    when it trains; its run is <out>/manifold-<dataset>-J2."""

    run_dir: str | None = None
    grid_size: int = 20
    epochs: int = 10
    dataset: str = "mnist"
    binarize: str | None = None
    train_size: int | None = None
    hidden_dims: tuple[int, ...] = (500,)
    compile: bool | None = None
    seed: int = 0
    out: str = "runs"
    device: str = "auto"
    data_dir: str | None = None
    progress: bool = True


TRAINING_SETTINGS = ("epochs", "dataset", "binarize", "train_size", "hidden_dims", "compile", "seed", "out")


def manifold(settings: ManifoldSettings) -> None:
    from .. import runs
    from ..data import load_dataset
    from ..trainer import train_and_report
    from ..trainer import resolve_device

    device = resolve_device(settings.device)
    if settings.run_dir:
        run_dir = Path(settings.run_dir)
        with runs.claim_run_dir(run_dir):
            vae, _, data = runs.load_run_and_data(run_dir, device, settings.data_dir)
            _draw_manifold_of(vae, data, run_dir, settings.grid_size)
        return
    run_dir = Path(settings.out) / f"manifold-{settings.dataset}-J2"
    config = train_config_from(settings, latent_dim=2, eval_samples=0, run_dir=str(run_dir))
    with runs.claim_run_dir(run_dir):
        # a run made here before is reused only with the very same settings (epochs included)
        state = existing_run(run_dir, config, {"device", "data_dir", "run_dir"})
        data = load_dataset(settings.dataset, settings.binarize, settings.data_dir, device, settings.train_size)
        if state is not None and state["epoch"] == settings.epochs:
            print(f"{run_dir} holds this model, trained before with the same settings: redrawing its figures")
        else:
            train_and_report(config, resume=state is not None, progress=settings.progress, dataset=data)
        _draw_manifold_of(runs.load_run(run_dir, device), data, run_dir, settings.grid_size)


def _draw_manifold_of(vae, data, run_dir: Path, grid_size: int) -> None:
    if vae.latent_dim != 2:
        raise ValueError(f"{run_dir} has a {vae.latent_dim}-D latent; the manifold needs J = 2")
    paths = draw_manifold(vae, data.test.images, data.test.labels, run_dir, grid_size, _class_names(data.name))
    print(f"wrote {', '.join(str(p) for p in paths)}")


def _class_names(dataset: str) -> list[str] | None:
    from ..data import DATASET_INFO

    names = DATASET_INFO[dataset].class_names if dataset in DATASET_INFO else None
    return list(names) if names else None


@torch.no_grad()
def _plot_manifold(means: torch.Tensor, grid_size: int, path: Path) -> None:
    """The decoder means on the grid, with z_1 and z_2 marked along the axes."""
    from ..plots import digit_grid, plt, save_figure

    grid = digit_grid(means, grid_size, padding=0)
    z = latent_grid(grid_size)[:grid_size, 0]  # the first row: z_1 from low to high
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ticks = list(range(0, grid_size, max(1, grid_size // 5))) + [grid_size - 1]
    side = grid.shape[-1] // grid_size  # an image's width in the grid
    centres = [side * (i + 0.5) for i in ticks]
    ax.set_xticks(centres, [f"{z[i]:.2f}" for i in ticks])
    ax.set_yticks(centres, [f"{-z[i]:.2f}" for i in ticks])  # rows run from high z_2 to low
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title(f"decoder means over $z = \\Phi^{{-1}}(u)$, $u$ on a {grid_size} x {grid_size} grid "
                 "of the unit square", fontsize=10)
    save_figure(fig, path, dpi=120)


def draw_manifold(vae, images: torch.Tensor, labels: torch.Tensor | None, out: Path,
                  grid_size: int = 20, class_names: list[str] | None = None) -> list[Path]:
    from ..plots import plt, save_figure

    device = next(vae.parameters()).device
    paths = [Path(out) / "manifold.png", Path(out) / "latent_scatter.png"]
    with torch.no_grad():
        means = torch.sigmoid(vae.decoder(latent_grid(grid_size).to(device)))
        loc = torch.cat([vae.encoder(images[i:i + 1000])[0] for i in range(0, len(images), 1000)]).cpu()
    _plot_manifold(means, grid_size, paths[0])
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    if labels is None:
        ax.scatter(loc[:, 0], loc[:, 1], s=2, alpha=0.5)
    else:
        labels = labels.cpu()
        cmap = plt.get_cmap("tab10")
        for value in sorted(labels.unique().tolist()):
            pick = labels == value
            name = class_names[value] if class_names else str(value)
            ax.scatter(loc[pick, 0], loc[pick, 1], s=2, alpha=0.6, color=cmap(value % 10), label=name)
        ax.legend(markerscale=6, fontsize=8, loc="best", title="label")
    ax.set_xlabel("$z_1$ (encoder mean)")
    ax.set_ylabel("$z_2$ (encoder mean)")
    ax.set_title("test images in latent space", fontsize=10)
    save_figure(fig, paths[1])
    return paths
