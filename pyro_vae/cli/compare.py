"""``python -m pyro_vae.compare RUN_DIR`` or ``... --train`` (``pyro-vae compare``): compare ELBO
estimators on one trained model, or by training one model per estimator; see pyro_vae/comparison.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from ..comparison import Estimator, compare_fixed_model, compare_training
from ..evaluation import DEFAULT_IWAE_K
from . import (ArgumentParser, UsageError, add_data_flags, add_net_flags, positive_float, positive_int, run_main,
               train_config)

FIXED_MODEL_DEFAULTS = {"num_images": 1000, "grad_batch": 100, "repeats": 100}
# training mode's own flags and defaults (the net's and the data's are TrainConfig's)
TRAINING_DEFAULTS = {"epochs": 5, "wall_seconds": None, "train_size": None, "eval_samples": 100,
                     "iwae_k": DEFAULT_IWAE_K, "eval_limit": None,
                     "latent_dim": None, "hidden_dims": None, "dataset": None, "binarize": None, "compile": None}
DEFAULT_ESTIMATORS = "trace:1,trace:5,trace:10,meanfield:1,meanfield:10,iwae:5,iwae:50"


def parse_estimators(text: str) -> list[Estimator]:
    """'trace:1,iwae:5,miwae:10x5' -> estimators; NAME:MxK for miwae and piwae (M estimates of
    K samples each), NAME:K for the others."""
    from ..objectives import OBJECTIVES

    multi = [name for name, record in OBJECTIVES.items() if record.multi_estimate]
    specs = []
    for item in text.split(","):
        name, _, particles = item.strip().partition(":")
        if name not in OBJECTIVES:
            raise UsageError(f"unknown estimator {name!r} in --estimators; choose from {', '.join(OBJECTIVES)}")
        if ("x" in particles) != (name in multi):
            raise UsageError(f"--estimators: {item!r}: {' and '.join(multi)} take NAME:MxK (M estimates of K "
                             "samples), the others NAME:K")
        estimates, _, count = particles.rpartition("x") if "x" in particles else ("1", "", particles)
        try:
            estimator = Estimator(name, int(count or 1), int(estimates))
        except ValueError:
            raise UsageError(f"--estimators: {item!r} should be NAME:K, or NAME:MxK for "
                             f"{' and '.join(multi)}, e.g. iwae:5, miwae:10x5") from None
        if estimator.particles < 1 or estimator.estimates < 1:
            raise UsageError(f"--estimators: particles must be positive in {item!r}")
        specs.append(estimator)
    return specs


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m pyro_vae.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", help="a trained run (fixed-model mode)")
    p.add_argument("--train", action="store_true", help="training mode: train one model per estimator")
    p.add_argument("--estimators", default=DEFAULT_ESTIMATORS,
                   help=f"NAME:K list, NAME:MxK for miwae and piwae (default {DEFAULT_ESTIMATORS})")
    fixed = p.add_argument_group("fixed-model mode")
    fixed.add_argument("--num-images", type=positive_int, help="test images for the bound (1000)")
    fixed.add_argument("--grad-batch", type=positive_int, help="the fixed gradient minibatch (100)")
    fixed.add_argument("--repeats", type=positive_int, help="R, gradient draws for the SNR (100)")
    training = p.add_argument_group("training mode")
    training.add_argument("--epochs", type=positive_int, help="epoch budget (5)")
    training.add_argument("--wall-seconds", type=positive_float, help="also a wall-time budget per estimator")
    training.add_argument("--eval-samples", type=int, help="K for IS log p(x) (100)")
    training.add_argument("--eval-limit", type=positive_int,
                          help="score log p(x) on the first N test images only (default: all)")
    training.add_argument("--iwae-k", type=positive_int, help=f"k of the IWAE_k bound beside it ({DEFAULT_IWAE_K})")
    training.add_argument("--compile", action="store_true", default=None,
                          help="trace and compile each estimator's step (see train --help)")
    add_net_flags(training)
    add_data_flags(training)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (fixed-model: RUN_DIR/comparison; training: runs/compare-train-<time>)")
    p.add_argument("--tensorboard", action="store_true", default=None,
                   help="also write TensorBoard events: the SNRs into OUT/tensorboard (fixed-model mode), "
                        "each run's curves into its own folder (training mode)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.specs = parse_estimators(args.estimators)
    if args.train == bool(args.run_dir):
        raise UsageError("give either RUN_DIR (fixed-model mode) or --train (training mode)")
    if args.run_dir and not Path(args.run_dir).is_dir():
        raise UsageError(f"{args.run_dir} is not a directory")
    # each mode's flags: the other mode's are refused, not ignored
    ours, theirs = (TRAINING_DEFAULTS, FIXED_MODEL_DEFAULTS) if args.train else \
        (FIXED_MODEL_DEFAULTS, TRAINING_DEFAULTS)
    foreign = [name for name in theirs if getattr(args, name) is not None]
    if foreign:
        raise UsageError(f"--{foreign[0].replace('_', '-')} applies only to "
                         f"{'fixed-model mode (RUN_DIR)' if args.train else 'training mode (--train)'}")
    for name, default in ours.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.train and args.eval_samples < 0:
        raise UsageError("--eval-samples must be >= 0")
    if args.train:
        out = args.out or Path("runs") / f"compare-train-{time.strftime('%Y%m%d-%H%M%S')}"
        compare_training(args.specs, out, train_config(args), wall_seconds=args.wall_seconds, iwae_k=args.iwae_k,
                         eval_limit=args.eval_limit, progress=not args.no_progress)
    else:
        compare_fixed_model(args.run_dir, args.specs, args.out, num_images=args.num_images,
                            grad_batch=args.grad_batch, repeats=args.repeats, seed=args.seed,
                            device=args.device, data_dir=args.data_dir, progress=not args.no_progress,
                            tensorboard=bool(args.tensorboard))


if __name__ == "__main__":
    run_main(main)
