"""The seed's experiments: ``python -m pyro_vae.experiments {latent-sweep,manifold,figures}``.

latent-sweep  Trains the seed model for each latent size J (3, 5, 10, 20, 200 by default) and
              plots train/test ELBO against training images seen, one panel per J, as Kingma &
              Welling's Figure 2, plus final test ELBO and IS log p(x) against J. Each J is an
              ordinary run directory: finished ones are skipped, interrupted ones resumed.
manifold      A J = 2 model (trained here, or ``--run-dir``): decoder means over a grid of z made
              by the inverse Gaussian CDF of an evenly spaced grid in the unit square (Kingma &
              Welling's Figure 4), and the test set's latent means coloured by label.
figures       Reconstructions, prior samples and learning curves of any run.
paper         Burda et al.'s benchmark recipe (784-200-200-50, dynamic binarization, their
              optimiser and 3,280-epoch schedule), resumable across sessions; ends with curve.
curve         IS log p(x) of every weight snapshot a run kept (``snapshots/``): the learning
              curve in test NLL beside the per-epoch test ELBO, as CSV and PNG.
paper-figure  The learning curves of several paper runs on one plot (docs/results.md).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch

from .cli import ArgumentParser, UsageError, non_negative_int, positive_int, run_main
from .data import BINARIZATIONS, DATASETS

DEFAULT_LATENT_DIMS = (3, 5, 10, 20, 200)
PAPER_BATCH_SIZE = 100  # a paper run at another batch size says so in its name
PAPER_HIDDEN_DIMS, PAPER_LATENT_DIM = (200, 200), 50  # Burda et al.'s 784-200-200-50


def latent_grid(points_per_side: int) -> torch.Tensor:
    """(n*n, 2) latent points: Phi^-1 of the centres of an n x n grid of cells in (0, 1)^2.
    Rows run from high z_2 (top of the picture) to low, columns from low z_1 to high."""
    u = (torch.arange(points_per_side, dtype=torch.float64) + 0.5) / points_per_side
    z = torch.distributions.Normal(0.0, 1.0).icdf(u)
    z2, z1 = torch.meshgrid(z.flip(0), z, indexing="ij")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1).float()


def _existing_run(run_dir: Path, config, may_change) -> dict | None:
    """The checkpoint of the run a recipe finds in ``run_dir`` (None if there is none yet), after
    refusing it if it was made with other settings than ``config`` asks for."""
    from . import runs
    from .trainer import refuse_changed_settings

    path = run_dir / runs.CHECKPOINT_FILE
    if not path.exists():
        return None
    state = runs.load_checkpoint(path)
    refuse_changed_settings(run_dir, state["config"], config.to_dict(), may_change)
    if state["epoch"] > config.epochs:
        raise UsageError(f"{run_dir} has trained {state['epoch']} epochs, more than --epochs {config.epochs}; "
                         "ask for at least that many, or use another --out")
    return state


def _score_path(run_dir: Path, eval_samples: int, device: str) -> Path:
    """Where train_and_report writes a run's test score at the default settings."""
    from .evaluate import score_path
    from .trainer import resolve_device

    return score_path(run_dir, eval_samples, resolve_device(device).type)


def latent_sweep(args) -> None:
    from . import runs
    from .data import load_dataset
    from .train import train_and_report
    from .trainer import RESUMABLE_SETTINGS, TrainConfig, resolve_device

    out = Path(args.out)
    device = resolve_device(args.device)
    with runs.claim_run_dir(out):  # the sweep's table and figures; each J's run is claimed in turn
        configs = [TrainConfig(dataset=args.dataset, binarize=args.binarize, data_dir=args.data_dir,
                               train_size=args.train_size, latent_dim=latent_dim,
                               hidden_dims=args.hidden_dims, epochs=args.epochs, optimizer=args.optimizer,
                               lr=args.lr, seed=args.seed, device=args.device,
                               eval_samples=args.eval_samples, run_dir=str(out / f"J{latent_dim}"))
                   for latent_dim in args.latent_dims]
        # every earlier run is checked against the settings asked for before any work
        found = [_existing_run(Path(c.run_dir), c, RESUMABLE_SETTINGS) for c in configs]
        data = load_dataset(args.dataset, args.binarize, args.data_dir, device, args.train_size)
        results = []
        for config, state in zip(configs, found):
            run_dir, latent_dim = Path(config.run_dir), config.latent_dim
            score = _score_path(run_dir, args.eval_samples, args.device)
            if state is not None and state["epoch"] == args.epochs and (not args.eval_samples or score.exists()):
                print(f"J={latent_dim}: finished run in {run_dir}, skipped")
            else:
                print(f"J={latent_dim}: {'resuming' if state else 'training'} in {run_dir}")
                train_and_report(config, resume=state is not None, progress=not args.no_progress, dataset=data)
            history = runs.read_metrics(run_dir / runs.METRICS_FILE)
            summary = json.loads(score.read_text())["summary"] if args.eval_samples else {}
            results.append({"latent_dim": latent_dim, "epochs": len(history),
                            "train_elbo": history[-1]["train_elbo"], "test_elbo": history[-1]["test_elbo"],
                            "log_px": summary.get("log_px_mean", math.nan),
                            "log_px_stderr": summary.get("log_px_stderr", math.nan), "history": history})
        _write_sweep(results, out, args)


def _write_sweep(results: list[dict], out: Path, args) -> None:
    from .plots import plt, save_figure

    fields = ["latent_dim", "epochs", "train_elbo", "test_elbo", "log_px", "log_px_stderr"]
    with open(out / "latent_sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    lines = ["| J | epochs | train ELBO | test ELBO | IS log p(x), K=%d |" % args.eval_samples,
             "|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['latent_dim']} | {r['epochs']} | {r['train_elbo']:.2f} | {r['test_elbo']:.2f} | "
                     f"{r['log_px']:.2f} ± {r['log_px_stderr']:.2f} |")
    (out / "latent_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.2), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], results):
        seen = [row["images_seen"] for row in r["history"]]
        ax.plot(seen, [row["train_elbo"] for row in r["history"]], label="train")
        ax.plot(seen, [row["test_elbo"] for row in r["history"]], "--", label="test")
        ax.set_xscale("log")
        ax.set_title(f"$N_z$ = {r['latent_dim']}", fontsize=10)
        ax.set_xlabel("training images seen")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("ELBO (nats per image)")
    axes[0][0].legend()
    save_figure(fig, out / "latent_sweep_curves.png", dpi=90)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    dims = [r["latent_dim"] for r in results]
    ax.plot(dims, [r["test_elbo"] for r in results], marker="o", label="test ELBO")
    if args.eval_samples:
        ax.errorbar(dims, [r["log_px"] for r in results], yerr=[r["log_px_stderr"] for r in results],
                    marker="s", capsize=3, label=f"IS log p(x), K={args.eval_samples}")
    ax.set_xscale("log")
    ax.set_xticks(dims)
    ax.set_xticklabels([str(d) for d in dims])
    ax.set_xlabel("latent dimension J")
    ax.set_ylabel("nats per test image")
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, out / "latent_sweep_summary.png", dpi=90)
    print(f"wrote {out}/latent_sweep.csv, latent_sweep.md, latent_sweep_curves.png, latent_sweep_summary.png")


def paper(args) -> None:
    """Burda et al.'s benchmark recipe: 784-200-200-50, dynamically binarized MNIST, all 60,000
    training images (no validation split), Adam (0.9, 0.999, eps 1e-4), 3^i epochs at
    1e-3 x 10^(-i/7), i = 0..7 (3,280 epochs; with --epochs N every stage is scaled by N/3280),
    then IS log p(x) with K = 5000. Weights are kept at the stage ends and at 1, 2, 5, 10, 20, ...
    epochs for the learning curve. Resumes an unfinished run."""
    from . import runs
    from .train import train_and_report
    from .trainer import BURDA_EPOCHS, RESUMABLE_SETTINGS, TrainConfig

    name = f"paper-{args.elbo}-{'k' if args.elbo == 'iwae' else 'L'}{args.num_particles}"
    if args.schedule_epochs and args.schedule_epochs >= args.epochs:
        raise UsageError(f"--schedule-epochs {args.schedule_epochs} must be fewer than --epochs {args.epochs}")
    if args.epochs != BURDA_EPOCHS or args.lr_schedule != "burda" or args.schedule_epochs:
        name += f"-{args.epochs}ep" + ("-equal" if args.lr_schedule == "burda-equal" else "")
        name += str(args.schedule_epochs or "")
    name += f"-b{args.batch_size}" if args.batch_size != PAPER_BATCH_SIZE else ""
    name += f"-ema{args.ema_decay:g}" if args.ema_decay else ""
    run_dir = Path(args.out) / name
    config = TrainConfig(dataset="mnist", binarize="dynamic", data_dir=args.data_dir, valid_size=0,
                         train_size=args.train_size, latent_dim=PAPER_LATENT_DIM, hidden_dims=PAPER_HIDDEN_DIMS,
                         elbo=args.elbo, num_particles=args.num_particles,
                         vectorize_particles=args.num_particles > 1, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule,
                         schedule_epochs=args.schedule_epochs, ema_decay=args.ema_decay, adam_eps=1e-4,
                         optimizer="adam", device=args.device, seed=args.seed,
                         eval_samples=args.eval_samples, run_dir=str(run_dir),
                         snapshot_epochs=paper_snapshot_epochs(args.epochs, args.lr_schedule, args.schedule_epochs))
    # what the name does not fix (seed, base rate, training images) must match a run resumed here;
    # a continuation (a new name) may also change the schedule, the batch size and the average
    may_change = RESUMABLE_SETTINGS | {"snapshot_epochs"}
    if args.continue_from:
        may_change |= {"schedule_epochs", "lr_schedule", "batch_size", "ema_decay"}
    with runs.claim_run_dir(run_dir):
        if args.continue_from:
            copy_run_to_continue(Path(args.continue_from), run_dir, args.epochs)
        resume = (run_dir / runs.CHECKPOINT_FILE).exists()
        print(f"{'resuming' if resume else 'starting'} {run_dir}: {args.elbo} with {args.num_particles} "
              f"sample(s), {args.epochs} epochs, batch {args.batch_size}")
        train_and_report(config, resume=resume, progress=not args.no_progress, may_change=may_change)
        if args.curve_samples:
            learning_curve(run_dir, args.curve_samples, args.device, args.data_dir, not args.no_progress)


def copy_run_to_continue(source: Path, run_dir: Path, epochs: int) -> None:
    """Start ``run_dir`` as a copy of the paper run ``source`` (its checkpoint, with Adam's state,
    the RNG states and any weight average; config, metrics, learning curve and snapshots), so that
    resuming it trains on from there. A run_dir that already holds a run is left as it is (an
    interrupted continuation resumes). The caller holds run_dir; the copy is staged inside it."""
    from . import runs

    if (run_dir / runs.CHECKPOINT_FILE).exists():
        print(f"{run_dir} already holds a run: resuming it, not copying {source}")
        return
    names = (runs.CONFIG_FILE, runs.METRICS_FILE, runs.CURVE_FILE, runs.SNAPSHOT_DIR, runs.CHECKPOINT_FILE)
    leftovers = set(names) | {runs.LOCK_FILE, ".copying"}  # a copy cut short is redone
    if run_dir.exists() and any(p.name not in leftovers for p in run_dir.iterdir()):
        raise UsageError(f"{run_dir} holds files but no {runs.CHECKPOINT_FILE}; move it away first")
    config_path = source / runs.CONFIG_FILE
    try:
        source_config = json.loads(config_path.read_text())
    except (OSError, ValueError):  # missing or corrupt: not a run this can continue
        source_config = {}
    if not isinstance(source_config, dict) or source_config.get("hidden_dims") != list(PAPER_HIDDEN_DIMS) \
            or source_config.get("latent_dim") != PAPER_LATENT_DIM:
        raise UsageError(f"--continue-from {source}: not a paper run (784-200-200-50 with its {runs.CONFIG_FILE})")
    trained = runs.load_checkpoint(source / runs.CHECKPOINT_FILE)["epoch"]
    if trained >= epochs:
        raise UsageError(f"--continue-from {source}: it has trained {trained} epochs; "
                         f"ask for more with --epochs (not {epochs})")
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
BURDA_NLL = {("trace", 1): 86.76, ("iwae", 5): 85.54}


def learning_curve(run_dir: Path, num_samples: int = 100, device: str = "auto",
                   data_dir: str | None = None, progress: bool = True) -> list[dict]:
    """Test NLL by importance sampling (K = num_samples) of each snapshot of a run, written to
    learning_curve.csv and, with the per-epoch test ELBO, learning_curve.png. Rows of that file
    at the same K whose snapshot is gone (those of a run this one continued) are kept."""
    from . import runs
    from .trainer import resolve_device

    torch_device = resolve_device(device)
    snapshots = sorted((run_dir / runs.SNAPSHOT_DIR).glob("epoch-*.pt"))
    if not snapshots:
        raise UsageError(f"{run_dir} kept no weight snapshots ({runs.SNAPSHOT_DIR}/epoch-*.pt)")
    with runs.claim_run_dir(run_dir):
        return _learning_curve(run_dir, snapshots, num_samples, torch_device, data_dir, progress)


def _learning_curve(run_dir: Path, snapshots: list[Path], num_samples: int, torch_device: torch.device,
                    data_dir: str | None, progress: bool) -> list[dict]:
    from . import runs
    from .marginal import estimate_per_item, summarize, vae_bytes_per_row

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
    from . import runs
    from .objectives import objective_label
    from .plots import plt, run_title, save_figure

    fig, ax = plt.subplots(figsize=(7.5, 4.8) if len(run_dirs) > 1 else (6.5, 4.2))
    lows, references = [], {}
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
        reference = BURDA_NLL.get((config["elbo"], config["num_particles"]))
        if reference is not None:
            references[reference] = f"Burda et al., {objective} (3,280 epochs): {reference}"
    for style, (reference, label) in zip(("--", ":"), sorted(references.items(), reverse=True)):
        ax.axhline(reference, color="grey", ls=style, lw=1, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per test image (lower is better)")
    low = min(lows + list(references))
    ax.set_ylim(low - 2, low + 25)
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
    from .trainer import BURDA_EPOCHS

    length = schedule_epochs or epochs
    if schedule == "burda-equal":
        stage_ends = {-(-(i + 1) * length // 8) for i in range(8)}
    else:
        stage_ends = {round(sum(3**j for j in range(i + 1)) * length / BURDA_EPOCHS) for i in range(8)}
    decades = {m * 10**e for e in range(6) for m in (1, 2, 5)}
    return sorted(e for e in stage_ends | decades | {epochs} if 1 <= e <= epochs)


MANIFOLD_TRAINING_FLAGS = {"epochs": 10, "dataset": "mnist", "binarize": None, "train_size": None,
                           "hidden_dims": [500], "seed": 0, "out": "runs"}


def manifold(args) -> None:
    from . import runs
    from .data import load_dataset
    from .train import train_and_report
    from .trainer import TrainConfig, resolve_device

    device = resolve_device(args.device)
    if args.run_dir:
        given = [name for name in MANIFOLD_TRAINING_FLAGS if getattr(args, name) is not None]
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} sets up the run manifold trains; "
                             "with --run-dir that run's own settings are used")
        run_dir = Path(args.run_dir)
        with runs.claim_run_dir(run_dir):
            vae, _, data = runs.load_run_and_data(run_dir, device, args.data_dir)
            _draw_manifold_of(vae, data, run_dir, args.grid_size)
        return
    for name, default in MANIFOLD_TRAINING_FLAGS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    run_dir = Path(args.out) / f"manifold-{args.dataset}-J2"
    config = TrainConfig(dataset=args.dataset, binarize=args.binarize, data_dir=args.data_dir,
                         train_size=args.train_size, latent_dim=2, hidden_dims=args.hidden_dims,
                         epochs=args.epochs, seed=args.seed, device=args.device,
                         eval_samples=0, run_dir=str(run_dir))
    with runs.claim_run_dir(run_dir):
        # a run made here before is reused only with the very same settings (epochs included)
        state = _existing_run(run_dir, config, {"device", "data_dir", "run_dir"})
        data = load_dataset(args.dataset, args.binarize, args.data_dir, device, args.train_size)
        if state is not None and state["epoch"] == args.epochs:
            print(f"{run_dir} holds this model, trained before with the same settings: redrawing its figures")
        else:
            train_and_report(config, resume=state is not None, progress=not args.no_progress, dataset=data)
        _draw_manifold_of(runs.load_run(run_dir, device), data, run_dir, args.grid_size)


def _draw_manifold_of(vae, data, run_dir: Path, grid_size: int) -> None:
    if vae.latent_dim != 2:
        raise UsageError(f"{run_dir} has a {vae.latent_dim}-D latent; the manifold needs J = 2")
    paths = draw_manifold(vae, data.test.images, data.test.labels, run_dir, grid_size, _class_names(data.name))
    print(f"wrote {', '.join(str(p) for p in paths)}")


def _class_names(dataset: str) -> list[str] | None:
    if dataset == "fashion-mnist":
        from torchvision.datasets import FashionMNIST

        return list(FashionMNIST.classes)
    return None


@torch.no_grad()
def draw_manifold(vae, images: torch.Tensor, labels: torch.Tensor | None, out: Path,
                  grid_size: int = 20, class_names: list[str] | None = None) -> list[Path]:
    from .plots import plt, save_figure, save_image_grid

    device = next(vae.parameters()).device
    z = latent_grid(grid_size).to(device)
    means = torch.sigmoid(vae.decoder(z))
    paths = [Path(out) / "manifold.png", Path(out) / "latent_scatter.png"]
    save_image_grid(means, paths[0], nrow=grid_size, title="decoder means over z = Phi^-1(grid in the unit square)")
    loc = torch.cat([vae.encoder(images[i:i + 1000])[0] for i in range(0, len(images), 1000)]).cpu()
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


def figures(args) -> None:
    from . import runs
    from .plots import draw_run_figures, run_title
    from .trainer import resolve_device

    run_dir = Path(args.run_dir)
    with runs.claim_run_dir(run_dir):
        vae, config, data = runs.load_run_and_data(run_dir, resolve_device(args.device), args.data_dir)
        history = runs.read_metrics(run_dir / runs.METRICS_FILE)
        paths = draw_run_figures(vae, history, data.test.images, run_dir, run_title(config))
    print(f"wrote {', '.join(str(p) for p in paths)}")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m pyro_vae.experiments", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    def common(q, epochs, training: bool = True, defaults: bool = True):
        """The flags shared by the recipes; a recipe that fixes the data and net (paper) passes
        training=False and does not list them. defaults=False leaves unset flags None."""
        def default(value):
            return value if defaults else None

        q.add_argument("--epochs", type=positive_int, default=default(epochs), help=f"(default {epochs})")
        if training:
            q.add_argument("--dataset", choices=DATASETS, default=default("mnist"), help="(default mnist)")
            q.add_argument("--binarize", choices=BINARIZATIONS,
                           help="default: the dataset's (grey levels for mnist, as the seed)")
            q.add_argument("--hidden-dims", type=positive_int, nargs="+", default=default([500]),
                           help="(default 500)")
        q.add_argument("--train-size", type=positive_int, help="first N training images only")
        q.add_argument("--data-dir")
        q.add_argument("--device", default="auto")
        q.add_argument("--seed", type=int, default=default(0), help="(default 0)")
        q.add_argument("--out", default=default("runs"), help="parent folder of the runs (default runs)")
        q.add_argument("--no-progress", action="store_true")

    sweep = sub.add_parser("latent-sweep", help="test ELBO against latent size (Kingma & Welling Fig. 2)")
    common(sweep, 5)
    sweep.add_argument("--latent-dims", type=positive_int, nargs="+", default=list(DEFAULT_LATENT_DIMS))
    sweep.add_argument("--optimizer", default="adam", choices=["adam", "adagrad"], help="(default adam)")
    sweep.add_argument("--lr", type=float)
    sweep.add_argument("--eval-samples", type=non_negative_int, default=100,
                       help="K of the IS log p(x) of each model (default 100; 0 skips)")
    paper_parser = sub.add_parser("paper", help="Burda et al.'s MNIST benchmark recipe (784-200-200-50)")
    common(paper_parser, 3280, training=False)
    paper_parser.add_argument("--elbo", default="trace", help="trace (the VAE) or iwae (default trace)")
    paper_parser.add_argument("--num-particles", type=positive_int, default=1, help="L, or k for iwae (1)")
    paper_parser.add_argument("--batch-size", type=positive_int, default=PAPER_BATCH_SIZE,
                              help=f"(default {PAPER_BATCH_SIZE}; Burda used 20)")
    paper_parser.add_argument("--lr", type=float, default=1e-3, help="base rate of the schedule (1e-3)")
    paper_parser.add_argument("--lr-schedule", default="burda", choices=["burda", "burda-equal"],
                              help="burda: 3^i-epoch stages scaled to --epochs; burda-equal: the same "
                                   "eight rates in equal stages (default burda)")
    paper_parser.add_argument("--schedule-epochs", type=positive_int,
                              help="fit the schedule to the first N epochs and train the rest at its last "
                                   "rate (default: all of --epochs); with --continue-from, the rest "
                                   "continues a finished N-epoch run")
    paper_parser.add_argument("--continue-from", metavar="RUN",
                              help="start from a copy of this paper run's last checkpoint (weights, "
                                   "Adam's state, any average) and train on to --epochs")
    paper_parser.add_argument("--ema-decay", type=float, default=0.0,
                              help="score an exponential moving average of the weights (e.g. 0.999; "
                                   "default 0: off, as Burda et al.)")
    paper_parser.add_argument("--eval-samples", type=non_negative_int, default=5000, help="K at the end (5000)")
    paper_parser.add_argument("--curve-samples", type=non_negative_int, default=100,
                              help="K of the IS log p(x) of each snapshot, for the curve (100; 0 skips)")
    curve_parser = sub.add_parser("curve", help="test NLL of every weight snapshot of a run")
    curve_parser.add_argument("run_dir")
    curve_parser.add_argument("--num-samples", type=positive_int, default=100, help="K (default 100)")
    curve_parser.add_argument("--data-dir")
    curve_parser.add_argument("--device", default="auto")
    curve_parser.add_argument("--no-progress", action="store_true")
    figure_parser = sub.add_parser("paper-figure", help="the learning curves of several paper runs on one plot")
    figure_parser.add_argument("run_dirs", nargs="+", help="runs with a learning_curve.csv (from paper or curve)")
    figure_parser.add_argument("--out", required=True, help="the PNG to write")
    manifold_parser = sub.add_parser("manifold", help="the learned 2-D manifold (Kingma & Welling Fig. 4)")
    common(manifold_parser, 10, defaults=False)
    manifold_parser.add_argument("--run-dir", help="use this trained J = 2 run instead of training one")
    manifold_parser.add_argument("--grid-size", type=positive_int, default=20, help="images per side (20)")
    figures_parser = sub.add_parser("figures", help="reconstructions, prior samples, curves of a run")
    figures_parser.add_argument("run_dir")
    figures_parser.add_argument("--data-dir")
    figures_parser.add_argument("--device", default="auto")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "latent-sweep":
        args.out = str(Path(args.out) / "latent-sweep")
        latent_sweep(args)
    elif args.command == "manifold":
        manifold(args)
    elif args.command == "paper":
        if args.elbo not in ("trace", "iwae"):
            raise UsageError(f"--elbo {args.elbo!r}: the paper recipe trains trace or iwae")
        paper(args)
    elif args.command == "paper-figure":
        from . import runs

        runs.check_writable_file(args.out)
        for run_dir in args.run_dirs:
            if not (Path(run_dir) / runs.CURVE_FILE).is_file():
                raise UsageError(f"{run_dir} has no {runs.CURVE_FILE}: run "
                                 f"'python -m pyro_vae.experiments curve {run_dir}' first")
        print(f"wrote {plot_paper_curve([Path(d) for d in args.run_dirs], Path(args.out))}")
    else:
        if not Path(args.run_dir).is_dir():
            raise UsageError(f"{args.run_dir} is not a directory")
        if args.command == "curve":
            learning_curve(Path(args.run_dir), args.num_samples, args.device, args.data_dir, not args.no_progress)
        else:
            figures(args)


if __name__ == "__main__":
    run_main(main)
