"""The experiments: ``python -m pyro_vae.experiments COMMAND`` (``pyro-vae experiments``).

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
export        A finished run as a small directory: the weights it is scored by (model.pt), its
              config, metrics, curves, figures (unless --no-figures) and chosen evaluations;
              scored and loaded like a run, but not resumable (results/ holds such copies).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import dataclasses

from ..recipes.latent_sweep import DEFAULT_LATENT_DIMS, SWEEP_FIGURES, SweepSettings, latent_sweep
from ..recipes.manifold import TRAINING_SETTINGS, ManifoldSettings, manifold
from ..model import MODELS
from ..recipes.paper import (PAPER_BATCH_SIZE, PAPER_OBJECTIVES, PaperSettings, learning_curve, paper,
                             plot_paper_curve)
from . import ArgumentParser, UsageError, add_data_flags, add_net_flags, non_negative_int, positive_int, run_main


def settings_from(cls, args, **extra):
    """A recipe's settings from the flags given (those left None take the recipe's defaults)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if getattr(args, f.name, None) is not None}
    if isinstance(given.get("hidden_dims"), list):
        given["hidden_dims"] = tuple(given["hidden_dims"])
    return cls(**{**given, "progress": not args.no_progress, **extra})


def figures(args) -> None:
    from .. import runs
    from ..plots import draw_run_figures, run_title
    from ..trainer import resolve_device

    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir
    with runs.claim_run_dir(out):
        vae, config, data = runs.load_run_and_data(run_dir, resolve_device(args.device), args.data_dir)
        history = runs.read_metrics(run_dir / runs.METRICS_FILE)
        paths = draw_run_figures(vae, history, data.test.images, out, run_title(config))
    print(f"wrote {', '.join(str(p) for p in paths)}")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m pyro_vae.experiments", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    def common(q, epochs, training: bool = True, defaults: bool = True):
        """The flags shared by the recipes; a recipe that fixes the data and net (paper) passes
        training=False and does not list them. defaults=False leaves unset flags None."""
        q.add_argument("--epochs", type=positive_int, help=f"(default {epochs})")
        if training:
            add_net_flags(q, latent_dim=False)
            q.add_argument("--compile", action="store_true", default=None,
                           help="trace and compile the training step (see train --help)")
        add_data_flags(q, dataset=training)
        q.add_argument("--device", default="auto")
        q.add_argument("--seed", type=int, help="(default 0)")
        q.add_argument("--out", help="parent folder of the runs (default runs)")
        q.add_argument("--no-progress", action="store_true")
        if defaults:
            q.set_defaults(epochs=epochs, seed=0, out="runs")

    sweep = sub.add_parser("latent-sweep", help="test ELBO against latent size (Kingma & Welling Fig. 2)")
    common(sweep, 5)
    sweep.add_argument("--latent-dims", type=positive_int, nargs="+", default=list(DEFAULT_LATENT_DIMS))
    sweep.add_argument("--optimizer", default="adam", choices=["adam", "adagrad"], help="(default adam)")
    sweep.add_argument("--lr", type=float)
    sweep.add_argument("--eval-samples", type=non_negative_int, default=100,
                       help="K of the IS log p(x) of each model (default 100; 0 skips)")
    sweep.add_argument("--figure-dir", help="also write the sweep's two figures into this folder (docs/figures)")
    paper_parser = sub.add_parser("paper", help="Burda et al.'s MNIST benchmark recipe (784-200-200-50)")
    common(paper_parser, 3280, training=False)
    paper_parser.add_argument("--elbo", default="trace", help="trace (the VAE), iwae, or dreg (IWAE's bound "
                              "with doubly reparameterized gradients) (default trace)")
    paper_parser.add_argument("--model", default="vae", choices=list(MODELS),
                              help="vae: 784-200-200-50; burda2: Burda et al.'s two stochastic layers (default vae)")
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
    export_parser = sub.add_parser("export", help="a finished run as a small, weights-only directory")
    export_parser.add_argument("run_dir")
    export_parser.add_argument("out_dir")
    export_parser.add_argument("--evaluations", nargs="+", default=["eval_test_K5000.json"],
                               help="the evaluation JSONs to copy (default eval_test_K5000.json)")
    export_parser.add_argument("--no-figures", action="store_true",
                               help="leave out the run's PNGs (reconstructions, samples): smaller")
    figures_parser = sub.add_parser("figures", help="reconstructions, prior samples, curves of a run")
    figures_parser.add_argument("run_dir")
    figures_parser.add_argument("--data-dir")
    figures_parser.add_argument("--device", default="auto")
    figures_parser.add_argument("--out", help="the folder to write them into (default: the run's own)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "latent-sweep":
        args.out = str(Path(args.out) / "latent_sweep")
        if args.figure_dir:
            from .. import runs

            for name in SWEEP_FIGURES:
                runs.check_writable_file(Path(args.figure_dir) / name)
        latent_sweep(settings_from(SweepSettings, args, latent_dims=tuple(args.latent_dims)))
    elif args.command == "manifold":
        given = [name for name in TRAINING_SETTINGS if getattr(args, name, None) is not None]
        if args.run_dir and given:
            raise UsageError(f"--{given[0].replace('_', '-')} sets up the run manifold trains; "
                             "with --run-dir that run's own settings are used")
        manifold(settings_from(ManifoldSettings, args))
    elif args.command == "paper":
        if args.elbo not in PAPER_OBJECTIVES:
            raise UsageError(f"--elbo {args.elbo!r}: the paper recipe trains {', '.join(PAPER_OBJECTIVES)}")
        if args.schedule_epochs and args.schedule_epochs >= args.epochs:
            raise UsageError(f"--schedule-epochs {args.schedule_epochs} must be fewer than --epochs {args.epochs}")
        paper(settings_from(PaperSettings, args))
    elif args.command == "paper-figure":
        from .. import runs

        runs.check_writable_file(args.out)
        for run_dir in args.run_dirs:
            if not (Path(run_dir) / runs.CURVE_FILE).is_file():
                raise UsageError(f"{run_dir} has no {runs.CURVE_FILE}: run "
                                 f"'python -m pyro_vae.experiments curve {run_dir}' first")
        print(f"wrote {plot_paper_curve([Path(d) for d in args.run_dirs], Path(args.out))}")
    else:
        if not Path(args.run_dir).is_dir():
            raise UsageError(f"{args.run_dir} is not a directory")
        if args.command == "export":
            from .. import runs

            with runs.claim_run_dir(args.out_dir):
                out = runs.export_model(args.run_dir, args.out_dir, args.evaluations, figures=not args.no_figures)
                print(f"wrote {out}")
            return
        if args.command == "curve":
            learning_curve(Path(args.run_dir), args.num_samples, args.device, args.data_dir, not args.no_progress)
        else:
            figures(args)


if __name__ == "__main__":
    run_main(main)
