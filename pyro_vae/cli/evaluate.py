"""``python -m pyro_vae.evaluate RUN_DIR`` (``pyro-vae evaluate``): log p(x) of a trained run per
image, by importance sampling (with the IWAE_k bound and the ELBO) or by annealed importance
sampling (``--method ais``); or BDMC's bounds on items simulated from the model (``--bdmc N``).

The report and the per-image scores are written into the run directory (docs/cli.md says which files)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .. import distributed, runs
from ..ais import AISSettings
from ..evaluation import (DEFAULT_BATCH_SIZE, DEFAULT_IWAE_K, DEFAULT_MAX_MEMORY_MB, SPLITS, evaluate_run,
                          format_summary)
from . import ArgumentParser, TrainingFailed, UsageError, positive_float, positive_int, run_main

AIS_DEFAULTS = AISSettings()
IS_ONLY = {"num_samples": "--num-samples", "max_memory_mb": "--max-memory-mb", "iwae_k": "--iwae-k",
           "binarization_seed": "--binarization-seed"}
AIS_ONLY = {"chains": "--chains", "ais_steps": "--ais-steps", "leapfrog_steps": "--leapfrog-steps",
            "init": "--init", "compile": "--compile", "no_resume": "--no-resume"}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m pyro_vae.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run directory written by pyro_vae.train")
    p.add_argument("--method", choices=("is", "ais"), default="is",
                   help="is: importance sampling with the guide (default); ais: annealed importance sampling")
    p.add_argument("--bdmc", type=positive_int, metavar="N",
                   help="instead of scoring the split: BDMC's lower and upper bounds on N items simulated "
                        "from the model, whose gap bounds AIS's error at the --chains/--ais-steps settings")
    p.add_argument("--num-samples", "-K", type=positive_int,
                   help="IS: K, importance samples per image (default 5000, as Burda et al.)")
    p.add_argument("--split", default="test", help="test or valid (default test)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                   help="images per chunk, at most (default 100; fewer if memory needs it)")
    p.add_argument("--max-memory-mb", type=positive_float,
                   help="IS: bound on the working memory of one chunk (default 1024)")
    p.add_argument("--iwae-k", type=positive_int,
                   help="IS: k of the IWAE_k bound reported beside log p(x) (default 50)")
    ais = p.add_argument_group("annealed importance sampling (--method ais, --bdmc)")
    ais.add_argument("--chains", type=positive_int, help=f"chains per image (default {AIS_DEFAULTS.num_chains})")
    ais.add_argument("--ais-steps", type=positive_int,
                     help=f"intermediate densities T on a sigmoid schedule (default {AIS_DEFAULTS.num_steps})")
    ais.add_argument("--leapfrog-steps", type=positive_int,
                     help=f"leapfrog steps per HMC transition (default {AIS_DEFAULTS.leapfrog_steps})")
    ais.add_argument("--init", choices=("guide", "prior"),
                     help="start from the guide's draws (default) or the model's prior")
    ais.add_argument("--compile", action="store_true",
                     help="trace and compile the HMC transition once (faster for long runs)")
    ais.add_argument("--no-resume", action="store_true",
                     help="keep no finished batches for a resume (by default an interrupted evaluation "
                          "continues where it stopped)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the importance samples (default 0; another seed writes "
                        "eval_<split>_K<K>_seed<seed>.json beside the seed-0 score)")
    p.add_argument("--limit", type=positive_int, help="score only the first N images of the split")
    p.add_argument("--binarization-seed", type=int,
                   help="IS, for a dynamically binarized run: the draw that binarizes its test (and valid) "
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
    annealed = args.method == "ais" or args.bdmc is not None
    _refuse_flags(args, IS_ONLY if annealed else AIS_ONLY,
                  "--method is" if annealed else "--method ais or --bdmc")
    if annealed:
        report = _annealed(args)
        from ..evaluation_ais import format_ais_summary as format_report
    else:
        report = evaluate_run(args.run_dir, args.num_samples or 5000, args.split, args.device,
                              batch_size=args.batch_size, max_memory_mb=args.max_memory_mb or DEFAULT_MAX_MEMORY_MB,
                              iwae_k=args.iwae_k or DEFAULT_IWAE_K, seed=args.seed, limit=args.limit,
                              data_dir=args.data_dir, progress=not args.no_progress, weights=args.weights,
                              binarization_seed=args.binarization_seed or 0, out=args.out)
        format_report = format_summary
    if distributed.current_world().is_main:
        print(format_report(report))
        if "unwritten_path" in report:
            raise TrainingFailed(f"could not write {report['unwritten_path']}; the report was "
                                 f"written to {report['path']}")
        print(f"wrote {report['path']}")


def _refuse_flags(args, flags: dict[str, str], belongs_to: str) -> None:
    for attribute, flag in flags.items():
        if getattr(args, attribute) not in (None, False):
            raise UsageError(f"{flag} is a setting of {belongs_to}, not of this evaluation")


def _annealed(args) -> dict:
    from ..evaluation_ais import bdmc_run, evaluate_run_ais

    if args.bdmc is not None and args.method == "ais":
        raise UsageError("--bdmc runs AIS itself on simulated items; give it without --method ais")
    settings = AISSettings(num_chains=args.chains or AIS_DEFAULTS.num_chains,
                           num_steps=args.ais_steps or AIS_DEFAULTS.num_steps,
                           leapfrog_steps=args.leapfrog_steps or AIS_DEFAULTS.leapfrog_steps,
                           init=args.init or AIS_DEFAULTS.init, batch_size=args.batch_size, compile=args.compile)
    common = dict(device=args.device, seed=args.seed, weights=args.weights, data_dir=args.data_dir,
                  progress=not args.no_progress, out=args.out, keep_parts=not args.no_resume)
    if args.bdmc is not None:
        if args.limit is not None or args.split != "test":
            raise UsageError("--bdmc simulates its items from the model: --limit and --split do not apply")
        return bdmc_run(args.run_dir, args.bdmc, settings, **common)
    return evaluate_run_ais(args.run_dir, settings, split=args.split, limit=args.limit, **common)


if __name__ == "__main__":
    run_main(main)
