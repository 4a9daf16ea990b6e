"""``python -m pyro_vae.evaluate RUN_DIR`` (``pyro-vae evaluate``): importance-sampled log p(x),
IWAE_k and ELBO of a trained run, per image, with a report of their means.

The report and the per-image scores are written into the run directory (docs/cli.md says which files)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .. import distributed, runs
from ..evaluate import (DEFAULT_BATCH_SIZE, DEFAULT_IWAE_K, DEFAULT_MAX_MEMORY_MB, SPLITS, evaluate_run,
                        format_summary)
from . import ArgumentParser, TrainingFailed, UsageError, positive_float, positive_int, run_main


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m pyro_vae.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run directory written by pyro_vae.train")
    p.add_argument("--num-samples", "-K", type=positive_int, default=5000,
                   help="K, importance samples per image (default 5000, as Burda et al.)")
    p.add_argument("--split", default="test", help="test or valid (default test)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                   help="images per chunk, at most (default 100; fewer if memory needs it)")
    p.add_argument("--max-memory-mb", type=positive_float, default=DEFAULT_MAX_MEMORY_MB,
                   help="bound on the working memory of one chunk (default 1024)")
    p.add_argument("--iwae-k", type=positive_int, default=DEFAULT_IWAE_K,
                   help="k of the IWAE_k bound reported beside log p(x) (default 50)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the importance samples (default 0; another seed writes "
                        "eval_<split>_K<K>_seed<seed>.json beside the seed-0 score)")
    p.add_argument("--limit", type=positive_int, help="score only the first N images of the split")
    p.add_argument("--binarization-seed", type=int, default=0,
                   help="for a dynamically binarized run: the draw that binarizes its test (and valid) "
                        "images (default 0, the one every score uses; another writes "
                        "eval_<split>_K<K>_draw<N>.json)")
    p.add_argument("--weights", default="averaged", choices=runs.WEIGHTS,
                   help="for a run trained with --ema-decay: its averaged weights (default) or the last "
                        "iterate (written to eval_<split>_K<K>_last.json)")
    p.add_argument("--data-dir", help="where the run's data set is (default: as in training)")
    p.add_argument("--out", help="write the JSON report to this file instead of into RUN_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.split not in SPLITS:
        raise UsageError(f"unknown --split {args.split!r}; choose from {', '.join(SPLITS)}")
    if not Path(args.run_dir).is_dir():
        raise UsageError(f"{args.run_dir} is not a directory")
    report = evaluate_run(args.run_dir, args.num_samples, args.split, args.device, batch_size=args.batch_size,
                          max_memory_mb=args.max_memory_mb, iwae_k=args.iwae_k, seed=args.seed, limit=args.limit,
                          data_dir=args.data_dir, progress=not args.no_progress, weights=args.weights,
                          binarization_seed=args.binarization_seed, out=args.out)
    if distributed.current_world().is_main:
        print(format_summary(report))
        if "unwritten_path" in report:
            raise TrainingFailed(f"could not write {report['unwritten_path']}; the report was "
                                 f"written to {report['path']}")
        print(f"wrote {report['path']}")


if __name__ == "__main__":
    run_main(main)
