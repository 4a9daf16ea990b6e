"""The commands: ``pyro-vae train|evaluate|compare|paired|experiments`` (also ``python -m
pyro_vae.COMMAND``), one module each here; this file holds what they share: one-line errors,
exit codes, flag types, the flags several commands take, and the TrainConfig those flags make.

The library below them raises Python exceptions (``ValueError`` for bad input); only here do
they become one line on stderr and an exit status.

Bad input (a flag, a data set, a checkpoint, an output folder that cannot be written, a run
directory another process is writing) ends a command with ONE line on stderr and exit status 2,
before anything is written; a failure during the work (a NaN loss, a full disk) exits 1; Ctrl-C
exits 130 after saving what can be saved.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from ..fit import Interrupted, TrainingFailed

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """Bad input from the user: a flag, a path, a data file or a checkpoint. A ValueError, so
    that code calling the library catches it as Python's own."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    value = _parse(text, int, "an integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _parse(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _parse(text, float, "a number")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _parse(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def add_net_flags(group, latent_dim: bool = True) -> None:
    """--hidden-dims (and --latent-dim): the seed VAE's size. Unset flags stay None and take
    TrainConfig's defaults in :func:`train_config`."""
    from ..trainer import TrainConfig

    d = TrainConfig()
    if latent_dim:
        group.add_argument("--latent-dim", type=positive_int, help=f"J, size of z (default {d.latent_dim})")
    group.add_argument("--hidden-dims", type=positive_int, nargs="+", metavar="H",
                       help="tanh hidden layers of the encoder, mirrored by the decoder "
                            f"(default {' '.join(map(str, d.hidden_dims))}; '200 200' is Burda's net)")


def add_data_flags(group, dataset: bool = True) -> None:
    """--dataset, --binarize (unless the command fixes the data), --data-dir, --train-size."""
    from ..data import BINARIZATIONS, DATASETS

    if dataset:
        group.add_argument("--dataset", choices=DATASETS, help="(default mnist)")
        group.add_argument("--binarize", choices=BINARIZATIONS,
                           help="none: grey levels (default for mnist, fashion-mnist); dynamic: fresh "
                                "Bernoulli draw per use; static: Larochelle & Murray's files")
    group.add_argument("--data-dir", help="folder holding the data (else $PYRO_VAE_DATA, then "
                                          "~/.cache/pyro_vae, then a download)")
    group.add_argument("--train-size", type=positive_int, help="use only the first N training images")


def train_config(args: argparse.Namespace, **settings):
    """The TrainConfig that the given flags (those not None) ask for, ``settings`` over them:
    the one place a command's flags become a training run's settings."""
    from ..trainer import TrainConfig

    given = {k: v for k, v in vars(args).items() if v is not None and k in TrainConfig.__dataclass_fields__}
    return TrainConfig(**{**given, **settings})


def run_main(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> None:
    """Run a CLI `main`, turning known failures into one line and an exit status."""
    try:
        main(argv)
    except ValueError as error:  # UsageError, and the library's own errors for bad input
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except TrainingFailed as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    except Interrupted as stop:
        print(f"{stop}; run the same command again (with --resume for train) to continue",
              file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as error:  # a disk that filled up, a folder made read-only during the work
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: {error.strerror or error}{where}; files written before it are intact",
              file=sys.stderr)
        sys.exit(EXIT_FAILED)


COMMANDS = {
    "train": "train a VAE (python -m pyro_vae.train)",
    "evaluate": "log p(x) of a trained run: importance sampling, AIS or BDMC",
    "compare": "compare ELBO estimators on one model, or by training one per estimator",
    "paired": "paired difference of two scores on the same images",
    "experiments": "the seed's experiments and Burda et al.'s benchmark recipe",
}


def dispatch(argv: Sequence[str] | None = None) -> None:
    """``pyro-vae COMMAND ...``: the console script; each command is also ``python -m pyro_vae.COMMAND``."""
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        print("usage: pyro-vae COMMAND [ARGS]   (pyro-vae COMMAND --help for its flags)\n\ncommands:")
        print("\n".join(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()))
        sys.exit(0 if argv else EXIT_BAD_INPUT)
    if argv[0] == "--version":
        from .. import __version__

        print(f"pyro-vae {__version__}")
        sys.exit(0)
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)} (see pyro-vae --help)",
              file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    module = importlib.import_module(f"pyro_vae.cli.{argv[0]}")
    run_main(module.main, argv[1:])
