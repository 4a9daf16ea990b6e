"""Kingma & Welling's latent-size experiment (their Figure 2): the seed model trained for each
latent size J, train and test ELBO against training images seen, one panel per J, and the final
test ELBO and IS log p(x) against J. Each J, optimiser and step size is an ordinary run
directory (J20-adam, J200-adagrad-lr0.02, ...): finished ones are skipped, interrupted ones
resumed, earlier ones with other settings refused. The table and figures cover every run in the
sweep's folder, so sweeps with Adam and with Adagrad at two step sizes into one folder end in one
table, where each optimiser and step size is compared across J."""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from . import existing_run, score_path_for, train_config_from

DEFAULT_LATENT_DIMS = (3, 5, 10, 20, 200)
SWEEP_FIGURES = ("latent_sweep_curves.png", "latent_sweep_summary.png")


def run_name(latent_dim: int, optimizer: str, lr: float | None = None) -> str:
    """A sweep's run directory for one J, optimiser and step size asked for (none: the
    optimiser's default): J20-adam, J200-adagrad-lr0.02, ..."""
    return f"J{latent_dim}-{optimizer}" + (f"-lr{lr:g}" if lr is not None else "")


def group(result: dict) -> str:
    """The runs a sweep compares with each other: one optimiser at one step size."""
    return f"{result['optimizer']} {result['lr']:g}"


@dataclass
class SweepSettings:
    """The latent sweep: one seed-model run per latent size in ``latent_dims``, each in
    <out>/J<J>-<optimizer>[-lr<lr>], scored by IS with ``eval_samples`` (0: not scored); the
    table and figures in ``out`` and, if given, the figures also in ``figure_dir``."""

    out: str
    latent_dims: tuple[int, ...] = DEFAULT_LATENT_DIMS
    optimizer: str = "adam"
    lr: float | None = None
    epochs: int = 5
    eval_samples: int = 100
    figure_dir: str | None = None
    hidden_dims: tuple[int, ...] | None = None
    compile: bool | None = None
    dataset: str | None = None
    binarize: str | None = None
    data_dir: str | None = None
    train_size: int | None = None
    seed: int = 0
    device: str = "auto"
    progress: bool = True


def latent_sweep(settings: SweepSettings) -> None:
    from .. import runs
    from ..data import load_dataset
    from ..trainer import train_and_report
    from ..trainer import RESUMABLE_SETTINGS, resolve_device

    out = Path(settings.out)
    device = resolve_device(settings.device)
    with runs.claim_run_dir(out):  # the sweep's table and figures; each J's run is claimed in turn
        configs = [train_config_from(settings, latent_dim=latent_dim,
                                     run_dir=str(out / run_name(latent_dim, settings.optimizer, settings.lr)))
                   for latent_dim in settings.latent_dims]
        # every earlier run is checked against the settings asked for before any work
        found = [existing_run(Path(c.run_dir), c, RESUMABLE_SETTINGS) for c in configs]
        first = configs[0]
        data = load_dataset(first.dataset, first.binarize, first.data_dir, device, first.train_size)
        for config, state in zip(configs, found):
            run_dir, latent_dim = Path(config.run_dir), config.latent_dim
            score = score_path_for(run_dir, settings.eval_samples, settings.device)
            finished = state is not None and state["epoch"] == settings.epochs
            if finished and (not settings.eval_samples or score.exists()):
                print(f"J={latent_dim}: finished run in {run_dir}, skipped")
            else:
                print(f"J={latent_dim}: {'resuming' if state else 'training'} in {run_dir}")
                train_and_report(config, resume=state is not None, progress=settings.progress, dataset=data)
        results = sweep_results(out, settings.eval_samples, settings.device, data.test.images)
        write_sweep(results, out, settings.eval_samples, settings.figure_dir)


def active_units(vae, images: torch.Tensor, threshold: float = 1e-2) -> int:
    """Burda et al.'s count of the latent dimensions a model uses: those whose posterior mean
    moves with the data, Var_x(E_q(z|x)[z_j]) > ``threshold`` (their 10^-2). A dimension the KL
    term has switched off has q(z_j|x) = p(z_j) for every x, so its mean does not move."""
    with torch.no_grad():
        means = torch.cat([vae.encoder(batch)[0] for batch in images.split(1000)])
    return int((means.var(0) > threshold).sum())


def sweep_results(out: Path, eval_samples: int, device: str, test_images: torch.Tensor | None = None) -> list[dict]:
    """Every run in the sweep folder ``out`` (each J, optimiser and step size trained there),
    ordered by optimiser, step size and J: its last epoch's train and test ELBO, their gap
    (train - test: the overfitting measure), its test log p(x) at ``eval_samples`` (NaN where not scored) and, given
    ``test_images``, its active units on them."""
    from .. import runs
    from ..trainer import resolve_device

    results = []
    for run_dir in out.glob("J*-*"):
        history = runs.read_metrics(run_dir / runs.METRICS_FILE) if (run_dir / runs.METRICS_FILE).is_file() else []
        if not history:
            continue
        config = json.loads((run_dir / runs.CONFIG_FILE).read_text())
        score = score_path_for(run_dir, eval_samples, device)
        summary = json.loads(score.read_text())["summary"] if eval_samples and score.is_file() else {}
        last = history[-1]
        results.append({"J": config["latent_dim"], "optimizer": config["optimizer"],
                        "lr": last["lr"],  # the rate the last epoch trained at, as metrics.csv records it
                        "epochs": last["epoch"], "images_seen": last["images_seen"],
                        "train_elbo": last["train_elbo"], "test_elbo": last["test_elbo"],
                        "gap": last["train_elbo"] - last["test_elbo"],
                        "log_px": summary.get("log_px_mean", math.nan),
                        "log_px_stderr": summary.get("log_px_stderr", math.nan), "history": history,
                        "active_units": (math.nan if test_images is None else
                                         active_units(runs.load_run(run_dir, resolve_device(device)), test_images))})
    return sorted(results, key=lambda r: (r["optimizer"], r["lr"], r["J"]))


def overtaken_from(larger: list[dict], smaller: list[dict]) -> int | None:
    """The images seen from which the ``larger`` history's test ELBO stays above the ``smaller``
    one's at every later common epoch (None if it never does, or they share no epoch)."""
    theirs = {row["epoch"]: row["test_elbo"] for row in smaller}
    common = [row for row in larger if row["epoch"] in theirs]
    since = None
    for row in common:
        if row["test_elbo"] > theirs[row["epoch"]]:
            since = row["images_seen"] if since is None else since
        else:
            since = None
    return since


def _score(result: dict) -> str:
    """'log p(x) ± s.e.', or 'not scored' for a run whose score the folder does not hold."""
    if not math.isfinite(result["log_px"]):
        return "not scored"
    return f"{result['log_px']:.2f} ± {result['log_px_stderr']:.2f}"


def write_sweep(results: list[dict], out: Path, eval_samples: int, figure_dir: str | None = None) -> None:
    """latent_sweep.csv and .md (one row per J, optimiser and step size) and the two figures, which also go
    to ``figure_dir`` if given."""
    from ..plots import plt, save_figure

    fields = ["J", "optimizer", "lr", "epochs", "images_seen", "train_elbo", "test_elbo", "gap",
              "log_px", "log_px_stderr", "active_units"]
    with open(out / "latent_sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    lines = [f"| J | optimiser | epochs | images seen | train ELBO | test ELBO | train - test | "
             f"IS log p(x), K={eval_samples} | active units |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['J']} | {group(r)} | {r['epochs']} | {r['images_seen']:.3g} | "
                     f"{r['train_elbo']:.2f} | {r['test_elbo']:.2f} | {r['gap']:+.2f} | "
                     f"{_score(r)} | {r['active_units']} |")
    lines += ["", "Train ELBO: the running mean over the last epoch's minibatches; test ELBO: one sample "
              "per test image after it. Active units: latent dimensions whose posterior mean varies over the "
              "test images by more than 0.01 (Burda et al.'s measure).", ""]
    groups = list(dict.fromkeys(group(r) for r in results))  # in the table's order
    for name in groups:
        mine = [r for r in results if group(r) == name]
        largest = mine[-1]
        for r in mine[:-1]:
            since = overtaken_from(largest["history"], r["history"])
            verdict = f"from {since:,} images seen on" if since is not None else "not at the end"
            lines.append(f"- {name}: J = {largest['J']}'s test ELBO above J = {r['J']}'s: "
                         f"{verdict}")
    (out / "latent_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    dims = sorted({r["J"] for r in results})
    fig, axes = plt.subplots(1, len(dims), figsize=(3.2 * len(dims), 3.4), sharey=True, squeeze=False)
    colors = dict(zip(groups, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, latent_dim in zip(axes[0], dims):
        for r in (r for r in results if r["J"] == latent_dim):
            seen = [row["images_seen"] for row in r["history"]]
            ax.plot(seen, [row["train_elbo"] for row in r["history"]], color=colors[group(r)],
                    label=f"{group(r)} train")
            ax.plot(seen, [row["test_elbo"] for row in r["history"]], "--", color=colors[group(r)],
                    label=f"{group(r)} test")
        ax.set_xscale("log")
        ax.set_title(f"J = {latent_dim}", fontsize=10)
        ax.set_xlabel("training images seen")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("ELBO (nats per image)")
    # from the second epoch on: a first epoch far below (Adagrad's) would flatten every curve
    later = [row[key] for r in results for row in r["history"][1:] for key in ("train_elbo", "test_elbo")]
    if later:
        axes[0][0].set_ylim(min(later) - 2, max(later) + 2)
    # one legend for all panels: every group's lines, wherever they are drawn
    labelled = {label: line for ax in axes[0] for line, label in zip(*ax.get_legend_handles_labels())}
    axes[0][0].legend(labelled.values(), labelled.keys(), fontsize=8)
    save_figure(fig, out / SWEEP_FIGURES[0], dpi=90)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name in groups:
        mine = [r for r in results if group(r) == name]
        xs = [r["J"] for r in mine]
        ax.plot(xs, [r["test_elbo"] for r in mine], marker="o", color=colors[name],
                label=f"{name}: test ELBO")
        if eval_samples:
            ax.errorbar(xs, [r["log_px"] for r in mine], yerr=[r["log_px_stderr"] for r in mine], marker="s",
                        linestyle="--", capsize=3, color=colors[name],
                        label=f"{name}: log p(x), K={eval_samples}")
    ax.set_xscale("log")
    ax.set_xticks(dims)
    ax.set_xticklabels([str(d) for d in dims])
    ax.set_xlabel("latent dimension J")
    ax.set_ylabel("nats per test image")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out / SWEEP_FIGURES[1], dpi=90)
    for name in SWEEP_FIGURES if figure_dir else ():
        shutil.copyfile(out / name, Path(figure_dir) / name)
    print(f"wrote {out}/latent_sweep.csv, latent_sweep.md, {', '.join(SWEEP_FIGURES)}"
          + (f"; the figures also in {figure_dir}" if figure_dir else ""))
