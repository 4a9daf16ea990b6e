"""Burda et al.'s benchmark recipe: 784-200-200-50, dynamically binarized MNIST, their optimiser
and 3,280-epoch schedule, resumable across sessions and continuable from a copy; the learning
curve in test NLL of its weight snapshots, and the figure of several runs' curves."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..model import MODELS
from ..objectives import objective_label
from . import train_config_from

PAPER_BATCH_SIZE = 100  # a paper run at another batch size says so in its name
PAPER_HIDDEN_DIMS, PAPER_LATENT_DIM = (200, 200), 50  # Burda et al.'s 784-200-200-50
PAPER_OBJECTIVES = ("trace", "iwae", "dreg")  # the VAE, IWAE, and IWAE trained by DReG


@dataclass
class PaperSettings:
    """Burda et al.'s benchmark recipe (see :func:`paper`): the estimator (``elbo`` in
    PAPER_OBJECTIVES) with ``num_particles`` samples on the net ``model``, for ``epochs`` on the
    schedule ``lr_schedule`` (fitted to the first ``schedule_epochs`` if given), optionally
    continuing the paper run ``continue_from``; scored with ``eval_samples`` at the end and
    ``curve_samples`` per kept snapshot. The run is <out>/paper-..., named by these settings."""

    elbo: str = "trace"
    model: str = "vae"
    num_particles: int = 1
    epochs: int = 3280
    batch_size: int = PAPER_BATCH_SIZE
    lr: float = 1e-3
    lr_schedule: str = "burda"
    schedule_epochs: int | None = None
    continue_from: str | None = None
    ema_decay: float = 0.0
    eval_samples: int = 5000
    curve_samples: int = 100
    out: str = "runs"
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    train_size: int | None = None
    progress: bool = True


def paper(settings: PaperSettings) -> None:
    """Burda et al.'s benchmark recipe: 784-200-200-50 (model burda2: their two stochastic
    layers), trained by the ELBO, IWAE or DReG, on dynamically binarized MNIST, all 60,000
    training images (no validation split), Adam (0.9, 0.999, eps 1e-4), 3^i epochs at
    1e-3 x 10^(-i/7), i = 0..7 (3,280 epochs; with N epochs every stage is scaled by N/3280),
    then IS log p(x) with K = 5000. Weights are kept at the stage ends and at 1, 2, 5, 10, 20, ...
    epochs for the learning curve. Resumes an unfinished run."""
    from .. import runs
    from ..trainer import train_and_report
    from ..schedules import BURDA_EPOCHS
    from ..trainer import RESUMABLE_SETTINGS

    s = settings
    if s.elbo not in PAPER_OBJECTIVES:
        raise ValueError(f"the paper recipe trains {', '.join(PAPER_OBJECTIVES)}, not {s.elbo!r}")
    net = MODELS[s.model].run_prefix  # the one-layer net's runs keep their names
    name = f"paper-{net}{s.elbo}-{'L' if s.elbo == 'trace' else 'k'}{s.num_particles}"
    if s.schedule_epochs and s.schedule_epochs >= s.epochs:
        raise ValueError(f"schedule_epochs {s.schedule_epochs} must be fewer than the epochs, {s.epochs}")
    if s.epochs != BURDA_EPOCHS or s.lr_schedule != "burda" or s.schedule_epochs:
        name += f"-{s.epochs}ep" + ("-equal" if s.lr_schedule == "burda-equal" else "")
        name += str(s.schedule_epochs or "")
    name += f"-b{s.batch_size}" if s.batch_size != PAPER_BATCH_SIZE else ""
    name += f"-ema{s.ema_decay:g}" if s.ema_decay else ""
    run_dir = Path(s.out) / name
    config = train_config_from(s, dataset="mnist", binarize="dynamic", valid_size=0, latent_dim=PAPER_LATENT_DIM,
                               hidden_dims=PAPER_HIDDEN_DIMS, vectorize_particles=s.num_particles > 1,
                               adam_eps=1e-4, optimizer="adam", run_dir=str(run_dir),
                               snapshot_epochs=paper_snapshot_epochs(s.epochs, s.lr_schedule, s.schedule_epochs))
    # what the name does not fix (seed, base rate, training images) must match a run resumed here;
    # a continuation (a new name) may also change the schedule, the batch size and the average
    may_change = RESUMABLE_SETTINGS | {"snapshot_epochs"}
    if s.continue_from:
        may_change |= {"schedule_epochs", "lr_schedule", "batch_size", "ema_decay"}
    with runs.claim_run_dir(run_dir):
        if s.continue_from:
            copy_run_to_continue(Path(s.continue_from), run_dir, s.epochs, s.model)
        resume = (run_dir / runs.CHECKPOINT_FILE).exists()
        print(f"{'resuming' if resume else 'starting'} {run_dir}: {s.elbo} with {s.num_particles} "
              f"sample(s), {s.epochs} epochs, batch {s.batch_size}")
        train_and_report(config, resume=resume, progress=s.progress, may_change=may_change)
        if s.curve_samples:
            learning_curve(run_dir, s.curve_samples, s.device, s.data_dir, s.progress)


def copy_run_to_continue(source: Path, run_dir: Path, epochs: int, model: str = "vae") -> None:
    """Start ``run_dir`` as a copy of the paper run ``source`` of the net ``model`` (its checkpoint,
    with Adam's state, the RNG states and any weight average; config, metrics, learning curve and snapshots), so that
    resuming it trains on from there. A run_dir that already holds a run is left as it is (an
    interrupted continuation resumes). The caller holds run_dir; the copy is staged inside it."""
    from .. import runs

    if (run_dir / runs.CHECKPOINT_FILE).exists():
        print(f"{run_dir} already holds a run: resuming it, not copying {source}")
        return
    names = (runs.CONFIG_FILE, runs.METRICS_FILE, runs.CURVE_FILE, runs.SNAPSHOT_DIR, runs.CHECKPOINT_FILE)
    leftovers = set(names) | {runs.LOCK_FILE, ".copying"}  # a copy cut short is redone
    if run_dir.exists() and any(p.name not in leftovers for p in run_dir.iterdir()):
        raise ValueError(f"{run_dir} holds files but no {runs.CHECKPOINT_FILE}; move it away first")
    config_path = source / runs.CONFIG_FILE
    try:
        source_config = json.loads(config_path.read_text())
    except (OSError, ValueError):  # missing or corrupt: not a run this can continue
        source_config = {}
    if not isinstance(source_config, dict) or source_config.get("hidden_dims") != list(PAPER_HIDDEN_DIMS) \
            or source_config.get("latent_dim") != PAPER_LATENT_DIM:
        raise ValueError(f"{source}, the run to continue, is not a paper run (784-200-200-50 with its "
                         f"{runs.CONFIG_FILE})")
    if source_config.get("model", "vae") != model:
        raise ValueError(f"{source}, the run to continue, is a run of the model "
                         f"{source_config.get('model', 'vae')}, not {model}")
    trained = runs.load_checkpoint(source / runs.CHECKPOINT_FILE)["epoch"]
    if trained >= epochs:
        raise ValueError(f"{source}, the run to continue, has trained {trained} epochs; ask for more "
                         f"epochs than that (not {epochs})")
    # copied into a staging folder inside the (held) run directory, then moved into place file by
    # file with the checkpoint last: a copy cut short leaves no checkpoint, so it is redone
    staging = run_dir / ".copying"
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted copy
    staging.mkdir(parents=True)
    for name in names:
        if (source / name).is_dir():
            shutil.copytree(source / name, staging / name)
        elif (source / name).is_file():
            shutil.copy2(source / name, staging / name)
    for name in names:
        if (staging / name).exists():
            shutil.rmtree(run_dir / name, ignore_errors=True)  # a snapshot folder of a cut-short copy
            os.replace(staging / name, run_dir / name)
    staging.rmdir()
    print(f"copied {source} (epoch {trained}) to {run_dir}")


# Burda et al. 2016, Table 1: test NLL (nats, k = 5000) of 784-200-200-50 trained 3,280 epochs
BURDA_NLL = {("vae", "trace", 1): 86.76, ("vae", "iwae", 5): 85.54, ("vae", "iwae", 50): 84.78,
             ("burda2", "trace", 1): 85.33, ("burda2", "iwae", 50): 82.90}  # their Table 1


def learning_curve(run_dir: Path, num_samples: int = 100, device: str = "auto",
                   data_dir: str | None = None, progress: bool = True) -> list[dict]:
    """Test NLL by importance sampling (K = num_samples) of each snapshot of a run, written to
    learning_curve.csv and, with the per-epoch test ELBO, learning_curve.png. Rows of that file
    at the same K whose snapshot is gone (those of a run this one continued) are kept."""
    from .. import runs
    from ..trainer import resolve_device

    torch_device = resolve_device(device)
    snapshots = sorted((run_dir / runs.SNAPSHOT_DIR).glob("epoch-*.pt"))
    if not snapshots:
        raise ValueError(f"{run_dir} kept no weight snapshots ({runs.SNAPSHOT_DIR}/epoch-*.pt)")
    with runs.claim_run_dir(run_dir):
        return _learning_curve(run_dir, snapshots, num_samples, torch_device, data_dir, progress)


def _learning_curve(run_dir: Path, snapshots: list[Path], num_samples: int, torch_device: torch.device,
                    data_dir: str | None, progress: bool) -> list[dict]:
    from .. import runs
    from ..marginal import estimate_per_item, summarize, vae_bytes_per_row

    vae, _, data = runs.load_run_and_data(run_dir, torch_device, data_dir)
    bytes_per_row = vae_bytes_per_row(vae)  # the architecture's, the same for every snapshot
    curve_path = run_dir / runs.CURVE_FILE
    snapshot_epochs = {int(path.stem.removeprefix("epoch-")) for path in snapshots}
    rows = [row for row in (runs.read_metrics(curve_path) if curve_path.exists() else [])
            if row["num_samples"] == num_samples and row["epoch"] not in snapshot_epochs]
    for path in snapshots:
        state = runs.load_checkpoint(path, torch_device)
        vae.load_state_dict(state["model"])
        per_image = estimate_per_item(vae.model, vae.guide, data.test.images, num_samples,
                                      bytes_per_row=bytes_per_row, progress=progress)
        summary = summarize(per_image, num_samples)
        rows.append({"epoch": state["epoch"], "num_samples": num_samples,
                     "test_nll": -summary["log_px_mean"], "test_nll_stderr": summary["log_px_stderr"],
                     "test_elbo": summary["elbo_mean"]})
        print(f"epoch {state['epoch']}: test NLL {rows[-1]['test_nll']:.2f} (K={num_samples})")
    rows.sort(key=lambda row: row["epoch"])
    runs.write_metrics(curve_path, rows)
    plot_paper_curve([run_dir], run_dir / "learning_curve.png")
    print(f"wrote {curve_path} and {run_dir / 'learning_curve.png'}")
    return rows


def plot_paper_curve(run_dirs: Sequence[Path], path: Path) -> Path:
    """The learning curves of paper runs on one plot: per run, the per-epoch test -ELBO (line),
    the IS test NLL of its snapshots (learning_curve.csv, points) and the final K = 5000
    estimate (square; a triangle for each larger K scored); Burda et al.'s figure for each
    objective shown (dashed, dotted)."""
    from .. import runs
    from ..plots import plt, run_title, save_figure

    fig, ax = plt.subplots(figsize=(7.5, 4.8) if len(run_dirs) > 1 else (6.5, 4.2))
    lows, highs, references = [], [], {}
    for index, run_dir in enumerate(run_dirs):
        run_dir = Path(run_dir)
        config = json.loads((run_dir / runs.CONFIG_FILE).read_text())
        history = runs.read_metrics(run_dir / runs.METRICS_FILE)
        rows = runs.read_metrics(run_dir / runs.CURVE_FILE)
        color = f"C{index}"
        objective = objective_label(config["elbo"], config["num_particles"],
                                    config.get("extra", {}).get("num_estimates", 1))
        name = f"{objective}, {config['epochs']} epochs"
        ax.plot([r["epoch"] for r in history], [-r["test_elbo"] for r in history], lw=0.8, alpha=0.6,
                color=color, label=f"{name}: test -ELBO (1 sample)")
        ax.plot([r["epoch"] for r in rows], [r["test_nll"] for r in rows], "o-", markersize=4, color=color,
                label=f"{name}: test NLL, IS K={rows[0]['num_samples']}")
        finals = sorted((int(p.stem.removeprefix("eval_test_K")), p) for p in run_dir.glob("eval_test_K*.json")
                        if p.stem.removeprefix("eval_test_K").isdigit())  # not a subset, another seed, ...
        for marker, (num_samples, report_path) in zip("sv^D", finals):  # square: the smallest K
            summary = json.loads(report_path.read_text())["summary"]
            ax.errorbar([history[-1]["epoch"]], [-summary["log_px_mean"]], yerr=[summary["log_px_stderr"]],
                        fmt=marker, color=color, mec="black", capsize=3,
                        label=f"{name}: final test NLL, IS K={num_samples}")
        lows.append(min(r["test_nll"] for r in rows))
        highs.append(max(r["test_nll"] for r in rows))
        reference = BURDA_NLL.get((config.get("model", "vae"), "iwae" if config["elbo"] == "dreg" else config["elbo"],
                                   config["num_particles"]))
        if reference is not None:
            references[reference] = f"Burda et al., {objective} (3,280 epochs): {reference}"
    for style, (reference, label) in zip(("--", ":"), sorted(references.items(), reverse=True)):
        ax.axhline(reference, color="grey", ls=style, lw=1, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per test image (lower is better)")
    low = min(lows + list(references))
    ax.set_ylim(low - 2, max(highs) + 2)  # every IS point shown; the 1-sample line may leave it early
    if len(run_dirs) == 1:
        ax.set_title(run_title(config), fontsize=9)
    else:
        ax.set_title("Burda et al.'s MNIST benchmark: 784-200-200-50, dynamically binarized", fontsize=9)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return path


def paper_snapshot_epochs(epochs: int, schedule: str = "burda", schedule_epochs: int | None = None) -> list[int]:
    """The ends of the schedule's stages (fitted to `schedule_epochs`, default `epochs`), the
    last epoch, and 1, 2, 5, 10, 20, 50, ... up to `epochs`."""
    from ..schedules import BURDA_EPOCHS

    length = schedule_epochs or epochs
    if schedule == "burda-equal":
        stage_ends = {-(-(i + 1) * length // 8) for i in range(8)}
    else:
        stage_ends = {round(sum(3**j for j in range(i + 1)) * length / BURDA_EPOCHS) for i in range(8)}
    decades = {m * 10**e for e in range(6) for m in (1, 2, 5)}
    return sorted(e for e in stage_ends | decades | {epochs} if 1 <= e <= epochs)
