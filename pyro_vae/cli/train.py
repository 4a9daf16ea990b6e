"""``python -m pyro_vae.train`` (``pyro-vae train``): train a VAE with any registered ELBO
estimator, then draw its figures and score its test set.

The defaults train the seed model (784-500-20, tanh, grey-level MNIST, batch 100, Adam) for
10 epochs, which takes a few minutes on two CPU cores. See docs/cli.md for every flag.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

from .. import distributed, runs
from ..model import MODELS
from ..objectives import OBJECTIVES, estimator_options, make_elbo
from ..trainer import train_and_report
from ..trainer import LR_SCHEDULES, OPTIMIZERS, RESUMABLE_SETTINGS, Interrupted, TrainConfig, changed_setting
from . import (ArgumentParser, UsageError, add_data_flags, add_net_flags, non_negative_int, positive_float,
               positive_int, run_main, train_config)

DEFAULTS = TrainConfig()


def option_type(default) -> type:
    """The flag's type, from the option's default: a count is a positive integer."""
    return positive_int if isinstance(default, int) and not isinstance(default, bool) else type(default)


def build_parser() -> ArgumentParser:
    d = DEFAULTS
    p = ArgumentParser(prog="python -m pyro_vae.train", description=__doc__.split("\n\n")[0])
    # Flags default to None so that a resumed run can tell which ones were given.
    model = p.add_argument_group("model")
    model.add_argument("--model", choices=list(MODELS),
                       help="; ".join(f"{name}: {record.help}" for name, record in MODELS.items())
                       + " (default vae)")
    add_net_flags(model)
    objective = p.add_argument_group("objective")
    objective.add_argument("--elbo", choices=sorted(OBJECTIVES), help=f"estimator (default {d.elbo})")
    objective.add_argument("--num-particles", type=positive_int,
                           help=f"L, samples of z per image per step (default {d.num_particles})")
    objective.add_argument("--vectorize-particles", action="store_true", default=None,
                           help="draw the L particles in one batched pass instead of a Python loop")
    for option in estimator_options():  # --alpha, --num-estimates, --beta: from the estimators' records
        objective.add_argument(option.flag, type=option_type(option.default), metavar=option.name.upper(),
                               help=f"{option.help.rstrip('.')}; for --elbo {' and '.join(option.takers)} "
                                    + ("(required)" if option.required else f"(default {option.default})"))
    objective.add_argument("--compile", action="store_true", default=None,
                           help="trace the step once and compile it with torch.compile: faster steps after a "
                                "one-off compilation of tens of seconds; the program's structure must not "
                                "depend on the data (see docs/cli.md)")
    objective.add_argument("--jit", action="store_true", help=argparse.SUPPRESS)  # retired: a pointer to --compile
    data = p.add_argument_group("data")
    add_data_flags(data)
    data.add_argument("--valid-size", type=non_negative_int,
                      help=f"images held out from the end of MNIST's 60k training set for validation "
                           f"(default {d.valid_size}; binarized-mnist has its own)")
    optim = p.add_argument_group("optimization")
    optim.add_argument("--epochs", type=positive_int, help=f"(default {d.epochs})")
    optim.add_argument("--batch-size", type=positive_int, help=f"(default {d.batch_size}, as the seed)")
    optim.add_argument("--lr", type=positive_float, help="learning rate (default 1e-3 for adam, 1e-2 for adagrad)")
    optim.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                       help="constant, or burda: 3^i epochs at lr x 10^(-i/7), i = 0..7 (default constant)")
    optim.add_argument("--adam-eps", type=positive_float, help="Adam's epsilon (default 1e-8; Burda et al. 1e-4)")
    optim.add_argument("--ema-decay", type=float,
                       help="score the run by an exponential moving average of the weights with this "
                            "decay per step, e.g. 0.999 (default 0: the weights themselves)")
    optim.add_argument("--optimizer", choices=sorted(OPTIMIZERS),
                       help=f"(default {d.optimizer}; Kingma & Welling used adagrad)")
    run = p.add_argument_group("run")
    run.add_argument("--device", help="auto, cpu or cuda (default auto: cuda when available)")
    run.add_argument("--seed", type=int, help=f"(default {d.seed})")
    run.add_argument("--eval-samples", type=non_negative_int,
                     help=f"K for the importance-sampled test log p(x) at the end; 0 skips it "
                          f"(default {d.eval_samples})")
    run.add_argument("--run-dir", help="output folder (default runs/<dataset>-<elbo>-L<L>-J<J>-<time>)")
    run.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace the run in --run-dir")
    run.add_argument("--tensorboard", action="store_true", default=None,
                     help="also write TensorBoard events (ELBOs, learning rate, step time, pictures) into "
                          "RUN_DIR/tensorboard (needs pip install 'pyro-vae[tensorboard]')")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args) -> tuple[TrainConfig, dict]:
    if args.jit:
        raise UsageError("--jit (Pyro's Jit* ELBOs, several times slower than the eager step) is retired: "
                         "use --compile")
    given = {k: v for k, v in vars(args).items()
             if v is not None and k in TrainConfig.__dataclass_fields__}
    if args.resume:
        if not args.run_dir:
            raise UsageError("--resume needs --run-dir (the run to continue)")
        if Path(args.run_dir).exists() and not Path(args.run_dir).is_dir():
            raise UsageError(f"{args.run_dir} is a file, not a run directory")
        stored = runs.load_checkpoint(Path(args.run_dir) / runs.CHECKPOINT_FILE)["config"]
        # the estimators' own options (kept in TrainConfig.extra) are read from their records
        given.update({o.name: getattr(args, o.name) for o in estimator_options() if getattr(args, o.name) is not None})
        stored = {**DEFAULTS.to_dict(), **stored, **stored.get("extra", {})}  # an option given is a flag
        changed = changed_setting(stored, dict(sorted(given.items())))
        if changed is not None:
            raise UsageError(f"a resumed run keeps its settings; drop --{changed.replace('_', '-')} "
                             f"(the run has {stored.get(changed)!r})")
        # the folder given is the run: the stored run_dir is where it was written, not a target
        config = TrainConfig(**{**{k: v for k, v in stored.items() if k in TrainConfig.__dataclass_fields__},
                                **{k: v for k, v in given.items() if k in RESUMABLE_SETTINGS},
                                "run_dir": args.run_dir})
    else:
        config = train_config(args)
        sizes = MODELS[config.model].sizes
        if sizes is not None:
            fixed = [flag for flag in ("latent_dim", "hidden_dims") if flag in given]
            if fixed:
                raise UsageError(f"--{fixed[0].replace('_', '-')}: --model {config.model} has sizes of its own")
            config.latent_dim, config.hidden_dims = sizes
        for option in estimator_options():
            value = getattr(args, option.name)
            if value is not None:
                if config.elbo not in option.takers:
                    raise UsageError(f"{option.flag} applies only to --elbo {' and '.join(option.takers)}")
                config.extra[option.name] = value
        if OBJECTIVES[config.elbo].multi_estimate and "num_estimates" not in config.extra:
            raise UsageError(f"--elbo {config.elbo} needs --num-estimates M, the IWAE estimates it averages "
                             "(M = 1 is iwae)")
        try:  # the estimator's own checks of its options (beta in [0, 1], alpha not 1), before any work
            make_elbo(config.elbo, config.num_particles, vectorize=True, **config.extra)
        except ValueError as error:
            raise UsageError(f"--elbo {config.elbo}: {error}") from None
    if config.run_dir is None:
        config.run_dir = str(Path("runs") / (f"{config.dataset}-{config.elbo}-L{config.num_particles}"
                                             f"-J{config.latent_dim}-{time.strftime('%Y%m%d-%H%M%S')}"))
    return config, given


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config, _ = config_from_args(args)
    try:
        train_and_report(config, resume=args.resume, overwrite=args.overwrite,
                         progress=not args.no_progress)
    except Interrupted as stop:
        if distributed.current_world().is_main:
            print(f"{stop}; resume with: python -m pyro_vae.train --run-dir {config.run_dir} --resume")
        raise KeyboardInterrupt from None  # exit 130 without repeating the message


if __name__ == "__main__":
    run_main(main)
