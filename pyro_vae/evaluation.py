"""Score a trained run by importance sampling: ``evaluate_run``, behind ``python -m pyro_vae.evaluate RUN_DIR``
(the command's flags are in pyro_vae/cli/evaluate.py).

Writes ``RUN_DIR/eval_<split>_K<K>.json`` (settings, aggregate figures, per-image values) and
prints a short table. Every setting that changes the numbers is in the file's name when it is
not the default, so one score never overwrites another: ``_firstN`` (a ``--limit`` subset),
``_drawN`` (another draw of a binarized test set), ``_seedN``, ``_iwaeN``, ``_bN`` and
``_memN`` (``--batch-size`` and ``--max-memory-mb`` set how samples are drawn in chunks),
``_cuda`` (CUDA's random numbers) and ``_last`` (the last iterate of an averaged run).
``--out FILE`` writes the report elsewhere, e.g. for a run directory that cannot be written.
See marginal.py for what the figures mean.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from . import runs

SPLITS = ("test", "valid")
DEFAULT_IWAE_K, DEFAULT_BATCH_SIZE, DEFAULT_MAX_MEMORY_MB = 50, 100, 1024.0


@dataclass(frozen=True)
class Scoring:
    """How a run is scored: K = ``num_samples`` importance samples per image of ``split`` (its
    first ``limit`` images), the IWAE_k bound with ``iwae_k``, in batches of ``batch_size``
    images within ``max_memory_mb``, seeded by ``seed``; the ``weights`` scored ("averaged" or
    "last"), and the seed of a fresh binarization of the images (0: the run's own)."""

    num_samples: int = 5000
    split: str = "test"
    batch_size: int = DEFAULT_BATCH_SIZE
    max_memory_mb: float = DEFAULT_MAX_MEMORY_MB
    iwae_k: int = DEFAULT_IWAE_K
    seed: int = 0
    limit: int | None = None
    weights: str = "averaged"
    binarization_seed: int = 0


def evaluate_run(run_dir: str | Path, num_samples: int = 5000, split: str = "test",
                 device: str = "auto", *, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_memory_mb: float = DEFAULT_MAX_MEMORY_MB, iwae_k: int = DEFAULT_IWAE_K, seed: int = 0,
                 limit: int | None = None,
                 data_dir: str | None = None, progress: bool = True, dataset=None,
                 weights: str = "averaged", binarization_seed: int = 0, out: str | None = None,
                 trained: tuple | None = None) -> dict:
    """Estimate log p(x) on a split of a run's data set; writes and returns the JSON report.
    ``trained`` = (model, config) scores a model already in memory (with ``dataset``) instead of
    reading the run's checkpoint.

    The report's destination (the run directory, held as its one writer, or ``out``) is checked
    before any work; if it cannot be written at the end all the same, the report goes to the
    system's temporary folder and ``report["path"]`` says where."""
    from .trainer import world_and_device

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    run_dir = Path(run_dir)
    world, torch_device = world_and_device(device)
    with report_destination(run_dir, out, world):
        scoring = Scoring(num_samples, split, batch_size, max_memory_mb, iwae_k, seed, limit, weights,
                          binarization_seed)
        return _evaluate_run(run_dir, scoring, world, torch_device, data_dir, progress, dataset, out, trained)


def _evaluate_run(run_dir: Path, scoring: Scoring, world, torch_device, data_dir: str | None, progress: bool,
                  dataset, out: str | None, trained: tuple | None) -> dict:
    from .marginal import estimate_per_item, summarize, vae_bytes_per_row

    num_samples, split, batch_size, max_memory_mb = (scoring.num_samples, scoring.split, scoring.batch_size,
                                                     scoring.max_memory_mb)
    iwae_k, seed, limit = scoring.iwae_k, scoring.seed, scoring.limit
    weights, binarization_seed = scoring.weights, scoring.binarization_seed

    if trained is not None:
        if dataset is None or binarization_seed or weights != "averaged":
            raise ValueError("a model in memory is scored on the data set passed with it, by its own weights")
        vae, config = trained
        vae.eval()
    elif dataset is None:
        vae, config, dataset = runs.load_run_and_data(run_dir, torch_device, data_dir, weights, binarization_seed)
    elif binarization_seed:
        raise ValueError("binarization_seed needs the run's data set loaded here, not passed in")
    else:
        vae, config = runs.load_run_and_config(run_dir, torch_device, weights)
    if not config.get("ema_decay"):
        weights = "last"  # no average was kept: the last iterate is all there is
    split_images = dataset.split(split).images
    images = split_images[:limit]
    if len(images) == 0:
        raise ValueError(f"the {split} split of this run is empty")
    started = time.perf_counter()
    per_image = estimate_per_item(
        vae.model, vae.guide, images, num_samples, batch_size=batch_size,
        max_memory_mb=max_memory_mb, seed=seed, iwae_k=iwae_k,
        bytes_per_row=vae_bytes_per_row(vae), progress=progress, world=world)
    report = {
        "settings": {"run_dir": str(run_dir), "split": split, "num_images": len(images),
                     "num_samples": num_samples, "iwae_k": min(iwae_k, num_samples), "seed": seed,
                     "batch_size": batch_size, "max_memory_mb": max_memory_mb,
                     "device": str(torch_device), "dataset": config["dataset"],
                     "binarize": config["binarize"], "binarization_seed": binarization_seed,
                     "weights": weights},
        "summary": summarize(per_image, num_samples),
        "seconds": round(time.perf_counter() - started, 3),
        "processes": world.size,
        "per_image": {k: [round(v, 6) for v in t.tolist()] for k, t in per_image.items()},
    }
    name = report_name(split, num_samples, len(images) < len(split_images) and len(images),
                       binarization_seed, seed, min(iwae_k, num_samples), batch_size, max_memory_mb,
                       torch_device.type, weights == "last" and bool(config.get("ema_decay")))
    write_report(report, Path(out) if out is not None else run_dir / name, world)
    return report


@contextlib.contextmanager
def report_destination(run_dir: Path, out: str | None, world):
    """Before any work: hold ``run_dir`` as its one writer (rank 0), or, for a report going to
    ``out``, check that it can be written there."""
    if out is not None and world.is_main:
        runs.check_writable_file(out)
    holding = world.is_main and out is None
    with runs.claim_run_dir(run_dir) if holding else contextlib.nullcontext():
        yield


def write_report(report: dict, path: Path, world) -> bool:
    """Rank 0 writes ``report`` to ``path``, or, if that fails now, to the system's temporary
    folder (``report["unwritten_path"]`` then names ``path``); ``report["path"]`` says where it
    went. True if it went to ``path``."""
    written = path
    if world.is_main:
        written = runs.write_json_or_fallback(path, report)
        if written != path:
            report["unwritten_path"] = str(path)
    report["path"] = str(written)
    return written == path


def report_name(split: str, num_samples: int, subset: int | bool, binarization_seed: int, seed: int,
                iwae_k: int, batch_size: int, max_memory_mb: float, device_type: str, last: bool) -> str:
    """eval_<split>_K<K>[...].json: each setting that changes the numbers, when not the default,
    adds a part, so that the run's own score (all images, seed 0, default chunks, the CPU, the
    weights it is scored by) is never overwritten by another."""
    parts = [f"eval_{split}_K{num_samples}"]
    parts += [f"first{subset}"] if subset else []
    parts += [f"draw{binarization_seed}"] if binarization_seed else []
    parts += [f"seed{seed}"] if seed != 0 else []
    parts += [f"iwae{iwae_k}"] if iwae_k != min(DEFAULT_IWAE_K, num_samples) else []
    parts += [f"b{batch_size}"] if batch_size != DEFAULT_BATCH_SIZE else []
    parts += [f"mem{max_memory_mb:g}"] if max_memory_mb != DEFAULT_MAX_MEMORY_MB else []
    parts += [device_type] if device_type != "cpu" else []
    parts += ["last"] if last else []
    return "_".join(parts) + ".json"


def score_path(run_dir: str | Path, num_samples: int, device_type: str = "cpu") -> Path:
    """Where a run's test score at K samples and otherwise default settings is written."""
    return Path(run_dir) / report_name("test", num_samples, False, 0, 0, min(DEFAULT_IWAE_K, num_samples),
                                       DEFAULT_BATCH_SIZE, DEFAULT_MAX_MEMORY_MB, device_type, False)


def format_summary(report: dict) -> str:
    s, cfg = report["summary"], report["settings"]
    k = cfg["num_samples"]
    threshold = s.get("ess_low_threshold", 0.01 * k)  # reports written before it was stored
    draw = f" (binarization draw {cfg['binarization_seed']})" if cfg.get("binarization_seed") else ""
    lines = [
        f"{cfg['split']} set{draw}, {cfg['num_images']} images, K = {k} samples per image "
        f"({report['seconds']:.1f} s)",
        f"  log p(x)  (IS, K={k:<5})  {s['log_px_mean']:10.3f} +- {s['log_px_stderr']:.3f} nats",
        f"  IWAE bound (k={cfg['iwae_k']:<5})    {s['iwae_mean']:10.3f} +- {s['iwae_stderr']:.3f}",
        f"  ELBO                     {s['elbo_mean']:10.3f} +- {s['elbo_stderr']:.3f}",
        f"  ESS median {s['ess_median']:.1f} of {k}; images with ESS < {threshold:g} "
        f"({'1% of K' if threshold > 5 else 'the floor of 5, as 1% of K is under 5'}): "
        f"{100 * s['ess_low_fraction']:.1f}%",
    ]
    if cfg["binarize"] == "none":
        lines.append("  note: grey-level data - these are cross-entropy scores, not normalised log-likelihoods")
    if s["ess_low_fraction"] > 0.05:
        lines.append("  warning: many images have a tiny ESS; the estimate may be far below log p(x)")
    return "\n".join(lines)
