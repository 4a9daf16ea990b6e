"""A training run: its settings (TrainConfig), its optimizer and schedule, the callbacks with
which it drives :func:`pyro_vae.fit.fit`, and ``train_and_report`` (train, draw the figures,
score the test set), what ``python -m pyro_vae.train`` runs.

A step is ``elbo.differentiable_loss(vae.model, vae.guide, x).backward(); optimizer.step()``:
the same gradients as ``pyro.infer.SVI.step`` (a test checks it) without its per-step host
sync (every registered estimator's ``differentiable_loss`` stays on the device). The
callbacks: losses read every ``sync_every`` steps
(every step on the CPU, where reading is free) to stop on a non-finite one and move the progress
bar; the learning-rate schedule; the weight average; gradients summed across ranks; the
wall-time budget; valid/test ELBOs, an atomic checkpoint and a metrics row after each epoch;
Ctrl-C saves a checkpoint at the current step so ``--resume`` continues exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pyro
import torch
from pyro.infer import Trace_ELBO
from torch import nn
from tqdm.auto import tqdm

from . import distributed, runs
from .data import Dataset, load_dataset
from .evaluation import DEFAULT_IWAE_K
from .fit import (Callback, Checkpoint, FitState, Interrupted, TrainingFailed, fit, make_step,  # noqa: F401
                  nonfinite_report)  # make_step and Interrupted re-exported
from .model import VAE, build_model
from .objectives import MAX_PLATE_NESTING, make_elbo
from .schedules import LR_SCHEDULES, scheduled_rate
from .seeds import SEED_STRIDE
from .tensorboard_log import TensorBoardLog, check_tensorboard

OPTIMIZERS = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}
DEFAULT_LR = {"adam": 1e-3, "adagrad": 1e-2}


@dataclass
class TrainConfig:
    """Every setting of a training run; saved as config.json and inside each checkpoint."""

    model: str = "vae"  # or "burda2": Burda et al.'s two stochastic layers (model.MODELS)
    dataset: str = "mnist"
    binarize: str | None = None  # None: the dataset's default (see data.py)
    data_dir: str | None = None
    train_size: int | None = None
    valid_size: int = 10_000
    latent_dim: int = 20
    hidden_dims: Sequence[int] = (500,)
    elbo: str = "trace"
    num_particles: int = 1
    vectorize_particles: bool = False
    compile: bool = False  # trace the step once and compile it (compiled.py)
    tensorboard: bool = False  # also write TensorBoard events into <run_dir>/tensorboard
    epochs: int = 10
    batch_size: int = 100
    lr: float | None = None  # None: 1e-3 for Adam, 1e-2 for Adagrad
    lr_schedule: str = "constant"  # or "burda": 3^i epochs at lr * 10^(-i/7), i = 0..7, fitted to `epochs`
    schedule_epochs: int | None = None  # fit the schedule to this many epochs instead; later ones keep its last rate
    ema_decay: float = 0.0  # > 0: evaluate an exponential moving average of the weights (Polyak averaging)
    adam_eps: float = 1e-8
    optimizer: str = "adam"
    device: str = "auto"
    seed: int = 0
    eval_samples: int = 100
    max_seconds: float | None = None  # wall-time budget of the training steps (None: epochs only)
    snapshot_epochs: Sequence[int] = ()  # keep the weights after these epochs (learning curves)
    run_dir: str | None = None
    extra: dict = field(default_factory=dict)  # per-estimator options (e.g. Renyi's alpha)

    def to_dict(self) -> dict:
        config = dataclasses.asdict(self)
        config["hidden_dims"] = list(self.hidden_dims)
        config["snapshot_epochs"] = list(self.snapshot_epochs)
        return config


def make_weight_average(vae: VAE, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """Polyak averaging for evaluation: after every step, average <- decay * average + (1 - decay) *
    weights (the first step copies them). The optimizer never sees the average; None if decay is 0."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
    if not decay:
        return None
    return torch.optim.swa_utils.AveragedModel(
        vae, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA device; use 'cpu'")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; choose from auto, cpu, cuda") from None


def world_and_device(name: str) -> tuple[distributed.World, torch.device]:
    """The process group (joined if torchrun started us) and this rank's device."""
    device = resolve_device(name)
    world = distributed.init_world(device)
    return world, distributed.local_device(device, world)


def make_optimizer(config: TrainConfig, parameters) -> torch.optim.Optimizer:
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
    # the fused kernel is the same Adam, about 10% faster a step on the CPU
    extra = {"eps": config.adam_eps, "fused": True} if config.optimizer == "adam" else {}
    return OPTIMIZERS[config.optimizer](parameters, lr=learning_rate(config, 0), **extra)


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The learning rate of a (0-based) epoch; a function of the epoch alone, so resuming keeps it."""
    base = config.lr if config.lr is not None else DEFAULT_LR[config.optimizer]
    return scheduled_rate(config.lr_schedule, epoch, base, config.schedule_epochs or config.epochs)


@torch.no_grad()
def estimate_elbo(vae: VAE, images: torch.Tensor, batch_size: int = 1000) -> float:
    """Single-sample Monte-Carlo ELBO in nats per image, averaged over ``images``."""
    if len(images) == 0:
        return float("nan")
    elbo = Trace_ELBO(max_plate_nesting=MAX_PLATE_NESTING)
    total = images.new_zeros((), dtype=torch.float64)
    for begin in range(0, len(images), batch_size):
        total += elbo.differentiable_loss(vae.model, vae.guide, images[begin:begin + batch_size])
    return -total.item() / len(images)


class _StopFlag:
    """SIGINT sets a flag the loop polls at step boundaries; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "_StopFlag":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an earlier run by mistake, or to resume one that is not there."""
    if resume and overwrite:
        raise ValueError("resume and overwrite contradict each other; ask for one")
    if resume and not (run_dir / runs.CHECKPOINT_FILE).exists():
        raise ValueError(f"cannot resume: {run_dir} holds no {runs.CHECKPOINT_FILE}")
    if not resume and not overwrite and runs.is_run_dir(run_dir):
        raise ValueError(f"{run_dir} already holds a run; resume it, or overwrite it to replace it")


# settings a resumed run may change; every other one is the run's own
# settings a resumed run may change: none changes what is computed (compile: the same draws,
# floating-point rounding apart)
RESUMABLE_SETTINGS = frozenset({"epochs", "device", "eval_samples", "data_dir", "run_dir", "max_seconds", "compile",
                                "tensorboard"})


def differs(given, stored) -> bool:
    if isinstance(given, (list, tuple)) and isinstance(stored, (list, tuple)):
        return list(given) != list(stored)
    return given != stored


def refuse_changed_settings(run_dir: Path, stored: dict, config: dict,
                            may_change: Iterable[str] = RESUMABLE_SETTINGS) -> None:
    """A run resumed or re-run keeps its settings: refuse the first one that ``config`` changes."""
    key = changed_setting(stored, config, may_change)
    if key is not None:
        was = stored.get(key, TrainConfig().to_dict().get(key))
        raise ValueError(f"{run_dir} was trained with {key} = {_show(was)}, not {_show(config[key])}; a resumed "
                         "run keeps its settings (use another run directory for new ones)")


def changed_setting(stored: dict, given: dict, may_change: Iterable[str] = RESUMABLE_SETTINGS) -> str | None:
    """The first setting of ``given`` that differs from a run's ``stored`` config, other than those
    that ``may_change``; None if there is none. A setting added since the run was made had its
    default; binarize None means the data set's default, which the stored config has resolved."""
    defaults = TrainConfig().to_dict()
    for key, value in given.items():
        if key in may_change or key == "versions" or (key == "binarize" and value is None):
            continue
        if differs(value, stored.get(key, defaults.get(key))):
            return key
    return None


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "(none)"
    return "(default)" if value is None else str(value)


@dataclass
class TrainedRun:
    """What :func:`train` hands back: the metrics history, the model the run is scored by (its
    weight average, if it keeps one), the last iterate, and the data set it was trained on."""

    history: list[dict]
    model: nn.Module
    last: nn.Module
    dataset: Dataset


def train(config: TrainConfig, dataset: Dataset | None = None, resume: bool = False,
          overwrite: bool = False, progress: bool = True,
          log: Callable[[str], None] = print,
          may_change: Iterable[str] = RESUMABLE_SETTINGS) -> TrainedRun:
    """Train (or resume) the run in ``config.run_dir``; returns its history and trained model.

    The run directory is claimed (one writer at a time) and everything is checked (flags, run
    directory, a resumed run's settings, data) before the first file is written. A resumed run
    may change only the settings in ``may_change``.
    """
    world, device = world_and_device(config.device)
    run_dir = Path(config.run_dir)
    with runs.claim_run_dir(run_dir) if world.is_main else contextlib.nullcontext():
        return _train(config, world, device, run_dir, dataset, resume, overwrite, progress, log, may_change)


def _train(config: TrainConfig, world: distributed.World, device: torch.device, run_dir: Path,
           dataset: Dataset | None, resume: bool, overwrite: bool, progress: bool,
           log: Callable[[str], None], may_change: Iterable[str]) -> TrainedRun:
    check_run_dir(run_dir, resume, overwrite)
    if config.tensorboard:
        check_tensorboard()  # a missing package is one line before the data is read
    checkpoint_path = run_dir / runs.CHECKPOINT_FILE
    state = runs.load_checkpoint(checkpoint_path) if resume else None  # on the CPU: read once
    if state is not None:
        refuse_changed_settings(run_dir, state["config"], config.to_dict(), may_change)
        rank_states = state.get("rng_ranks") or [state["rng"]]
        if len(rank_states) != world.size:
            raise ValueError(f"{checkpoint_path} was written by {len(rank_states)} process(es); "
                             f"resume it with the same number, not {world.size}")
    if not world.is_main:
        log = _quiet
        progress = False
    if dataset is None:
        dataset = load_dataset(config.dataset, config.binarize, config.data_dir, device,
                               config.train_size, config.valid_size)
    config.binarize = dataset.binarize
    if config.batch_size * world.size > len(dataset.train):
        raise ValueError(f"batch_size {config.batch_size} x {world.size} process(es) is larger than the "
                         f"{len(dataset.train)} training images")
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)  # the same initial parameters on every rank
    vae = build_model(config.to_dict()).to(device)
    if world.active:  # but each rank its own samples
        pyro.set_rng_seed(config.seed + SEED_STRIDE * (world.rank + 1))
    elbo = make_elbo(config.elbo, config.num_particles, config.vectorize_particles, **config.extra)
    optimizer = make_optimizer(config, vae.parameters())
    average = make_weight_average(vae, config.ema_decay)
    evaluated = average.module if average is not None else vae  # the weights the run is scored by
    distributed.barrier(world)  # every rank has checked the run directory before rank 0 writes
    if overwrite and world.is_main:
        runs.clear_run_outputs(run_dir)

    if state is not None and world.is_main:
        runs.write_metrics(run_dir / runs.METRICS_FILE, state["history"])  # the checkpoint's is the truth
    if world.is_main:
        runs.write_json(run_dir / runs.CONFIG_FILE, {**config.to_dict(), "versions": _versions()})
    if state is None and world.is_main:
        log(f"{config.dataset} ({dataset.binarize}): {len(dataset.train)} train, {len(dataset.valid)} "
            f"valid, {len(dataset.test)} test images on {device}; initial test ELBO "
            f"{estimate_elbo(vae, dataset.test.images):.2f} nats/image")

    checkpointer = RunCheckpoint(config, run_dir, average, world, resume=state if state is not None else False)
    callbacks = [
        checkpointer,  # first: a resume restores the weights, RNGs and position before anything runs
        LearningRateSchedule(config),
        *([DataParallel(world, device)] if world.active else []),
        *([WeightAverage(average)] if average is not None else []),
        LossWatch(sync_every=1 if device.type == "cpu" else 50, progress=progress),
        StopOnCtrlC(checkpointer, world, device),
        *([TimeBudget(config.max_seconds)] if config.max_seconds else []),
        EpochReport(evaluated, dataset, world),
        checkpointer.saver,  # after the row is complete
        EpochLog(log, len(dataset.valid) > 0, config.max_seconds),
        *([TensorBoardLog(run_dir / "tensorboard", evaluated, dataset.test.images)]
          if config.tensorboard and world.is_main else []),
    ]
    final = fit(vae, dataset, elbo, epochs=config.epochs, batch_size=config.batch_size, optimizer=optimizer,
                callbacks=callbacks, seed=config.seed, rank=world.rank, world_size=world.size, compile=config.compile)
    return TrainedRun(final.history, evaluated, vae, dataset)


class LearningRateSchedule(Callback):
    """Set each epoch's rate (a function of the epoch alone) and record it in the epoch's row."""

    def __init__(self, config: TrainConfig):
        self.config, self.rate = config, None

    def on_epoch_start(self, state: FitState) -> None:
        self.rate = learning_rate(self.config, state.epoch)
        for group in state.optimizer.param_groups:
            group["lr"] = self.rate

    def on_epoch_end(self, state: FitState, row: dict) -> None:
        row["lr"] = self.rate


class DataParallel(Callback):
    """Sum the gradients of all ranks after backward (one all-reduce, no DDP wrapper), and the
    epoch's training loss over ranks."""

    def __init__(self, world: distributed.World, device: torch.device):
        self.world, self.device = world, device

    def after_backward(self, state: FitState) -> None:
        distributed.sum_gradients(state.module.parameters())

    def on_epoch_end(self, state: FitState, row: dict) -> None:
        trained = row["images_seen"] - (state.history[-2]["images_seen"] if len(state.history) > 1 else 0)
        row["train_elbo"] = -distributed.sum_scalar(state.loss_sum, self.device) / trained


class WeightAverage(Callback):
    """Polyak averaging: update the average after every step."""

    def __init__(self, average: torch.optim.swa_utils.AveragedModel):
        self.average = average

    def on_step_end(self, state: FitState) -> None:
        self.average.update_parameters(state.module)


class LossWatch(Callback):
    """Read the losses every ``sync_every`` steps (every step on the CPU, where reading is free):
    stop on a non-finite one, naming epoch and step, and move the progress bar."""

    def __init__(self, sync_every: int, progress: bool):
        self.sync_every, self.progress, self.bar, self.checked = sync_every, progress, None, 0

    def on_epoch_start(self, state: FitState) -> None:
        self.checked = state.step  # past 0 in the epoch a resume starts in
        self.bar = tqdm(total=state.num_batches, initial=state.step, desc=f"epoch {state.epoch + 1}/{state.epochs}",
                        disable=None if self.progress else True, leave=False, dynamic_ncols=True)

    def on_step_end(self, state: FitState) -> None:
        step = state.step
        if (step + 1) % self.sync_every and step + 1 != state.num_batches:
            return
        recent = state.losses[self.checked:step + 1].cpu()
        if not torch.isfinite(recent).all():
            bad = self.checked + int((~torch.isfinite(recent)).nonzero()[0])
            raise TrainingFailed(nonfinite_report(state.module, state.epoch, bad, float(state.losses[bad])))
        self.bar.update(step + 1 - self.checked)
        self.bar.set_postfix(elbo=f"{-recent.mean().item() / state.batch_size:.2f}")
        self.checked = step + 1

    def on_epoch_end(self, state: FitState, row: dict) -> None:
        self.bar.close()

    def on_fit_end(self, state: FitState) -> None:
        if self.bar is not None:
            self.bar.close()


class StopOnCtrlC(Callback):
    """Ctrl-C (on any rank) stops at the next step boundary: a checkpoint of the epoch so far,
    then Interrupted; a second Ctrl-C stops at once."""

    def __init__(self, checkpointer: RunCheckpoint, world: distributed.World, device: torch.device):
        self.checkpointer, self.world, self.device = checkpointer, world, device
        self.flag = _StopFlag()

    def on_fit_start(self, state: FitState) -> None:
        self.flag.__enter__()

    def on_step_start(self, state: FitState) -> None:
        requested = distributed.any_rank(self.flag.requested, self.device) if self.world.active else self.flag.requested
        if requested:
            self.checkpointer.save(state, state.epoch, state.step, epoch_losses=state.losses[:state.step].cpu(),
                                   epoch_seconds=state.seconds())
            raise Interrupted(f"interrupted at epoch {state.epoch + 1}, step {state.step}; checkpoint saved")

    def on_fit_end(self, state: FitState) -> None:
        self.flag.__exit__()


class TimeBudget(Callback):
    """Stop once the training steps of all epochs (resumed ones included) have taken ``seconds``;
    the epoch under way is closed early."""

    def __init__(self, seconds: float):
        self.seconds, self.spent = seconds, 0.0

    def on_fit_start(self, state: FitState) -> None:
        self.spent = sum(row["epoch_seconds"] for row in state.history)

    def on_epoch_start(self, state: FitState) -> None:
        state.stop = self.spent >= self.seconds

    def on_step_end(self, state: FitState) -> None:
        state.stop = self.spent + state.seconds() >= self.seconds

    def on_epoch_end(self, state: FitState, row: dict) -> None:
        self.spent += row["epoch_seconds"]


class EpochReport(Callback):
    """The valid and test ELBO of the weights the run is scored by, at each epoch's end (rank 0
    alone writes rows, so the other ranks need not score the model)."""

    def __init__(self, evaluated: nn.Module, dataset: Dataset, world: distributed.World):
        self.evaluated, self.dataset, self.world = evaluated, dataset, world

    def on_epoch_end(self, state: FitState, row: dict) -> None:
        main = self.world.is_main
        row["valid_elbo"] = estimate_elbo(self.evaluated, self.dataset.valid.images) if main else math.nan
        row["test_elbo"] = estimate_elbo(self.evaluated, self.dataset.test.images) if main else math.nan


METRIC_FIELDS = ("epoch", "images_seen", "train_elbo", "valid_elbo", "test_elbo", "epoch_seconds", "lr")


class RunCheckpoint(Checkpoint):
    """A run's checkpoint: fit's, with the run's config, the weight average and, with several
    ranks, every rank's RNG states and partial losses, so that a resume is exact; after each
    epoch also any weight snapshot asked for and the metrics row. Listed first among the
    callbacks (to restore), its ``saver`` comes after the callbacks that fill the epoch's row."""

    def __init__(self, config: TrainConfig, run_dir: Path, average, world: distributed.World,
                 resume: bool | dict = False):
        super().__init__(run_dir / runs.CHECKPOINT_FILE, resume)
        self.config, self.run_dir, self.average, self.world = config, run_dir, average, world
        self.saver = _EpochSaver(self)

    def contents(self, state: FitState, epoch: int, step: int) -> dict:
        extra = {"config": self.config.to_dict()}
        if self.average is not None:
            extra.update(model_ema=self.average.module.state_dict(), ema_updates=int(self.average.n_averaged))
        return {**super().contents(state, epoch, step), **extra}

    def save(self, state: FitState, epoch: int, step: int, **extra) -> None:
        if self.world.active:  # every rank's RNG and partial losses
            extra["rng_ranks"] = distributed.gather_objects(runs.rng_state(), self.world)
            if "epoch_losses" in extra:
                extra["epoch_losses_ranks"] = distributed.gather_objects(extra["epoch_losses"], self.world)
        if self.world.is_main:
            super().save(state, epoch, step, **extra)
        distributed.barrier(self.world)

    def restore(self, saved: dict, state: FitState) -> None:
        rank_states = saved.get("rng_ranks") or [saved["rng"]]
        super().restore({**saved, "rng": rank_states[self.world.rank]}, state)
        if self.average is not None and "model_ema" in saved:  # else the average starts here
            self.average.module.load_state_dict(saved["model_ema"])
            self.average.n_averaged.fill_(saved["ema_updates"])
        if self.world.active:
            state.resumed_losses = saved["epoch_losses_ranks"][self.world.rank] if state.step else None

    def on_epoch_end(self, state: FitState, row: dict) -> None:
        pass  # the saver does it, once the row is complete


class _EpochSaver(Callback):
    def __init__(self, checkpoint: RunCheckpoint):
        self.checkpoint = checkpoint

    def on_epoch_end(self, state: FitState, row: dict) -> None:
        run = self.checkpoint
        ordered = {**{k: row[k] for k in METRIC_FIELDS if k in row}, **row}
        row.clear()
        row.update(ordered)
        run.save(state, state.epoch + 1, 0)
        epoch = state.epoch + 1
        if epoch in run.config.snapshot_epochs and run.world.is_main:
            evaluated = run.average.module if run.average is not None else state.module
            runs.save_checkpoint(run.run_dir / runs.SNAPSHOT_DIR / f"epoch-{epoch:05d}.pt",
                                 {"config": run.config.to_dict(), "model": evaluated.state_dict(), "epoch": epoch})
        if run.world.is_main:
            runs.append_metrics(run.run_dir / runs.METRICS_FILE, row)


class EpochLog(Callback):
    """One line per epoch; the last, if a wall-time budget closed it early, says so."""

    def __init__(self, log: Callable[[str], None], has_valid: bool, max_seconds: float | None):
        self.log, self.has_valid, self.max_seconds = log, has_valid, max_seconds

    def on_epoch_end(self, state: FitState, row: dict) -> None:
        if state.step < state.num_batches:
            self.log(f"wall-time budget of {self.max_seconds:g} s spent after {state.step} steps of epoch "
                     f"{state.epoch + 1}")
            return
        valid = f"valid {row['valid_elbo']:.2f}  " if self.has_valid else ""
        self.log(f"epoch {state.epoch + 1}/{state.epochs}  train ELBO {row['train_elbo']:.2f}  "
                 f"{valid}test {row['test_elbo']:.2f}  nats/image  ({row['epoch_seconds']:.1f} s)")


def _quiet(_: str) -> None:
    pass


def _versions() -> dict:
    return {"torch": torch.__version__, "pyro": pyro.__version__, "python": sys.version.split()[0]}


def train_and_report(config: TrainConfig, resume: bool = False, overwrite: bool = False,
                     progress: bool = True, dataset=None, may_change=RESUMABLE_SETTINGS,
                     iwae_k: int = DEFAULT_IWAE_K, eval_limit: int | None = None) -> dict:
    """Train, draw the run's figures, and score the test set by importance sampling (log p(x) with
    ``config.eval_samples`` samples, the IWAE_k bound with ``iwae_k`` and the ELBO from the same
    samples; only the first ``eval_limit`` test images if given), holding the run directory (one
    writer) from before the data is read to the end."""
    world, _ = world_and_device(config.device)
    with runs.claim_run_dir(config.run_dir) if world.is_main else contextlib.nullcontext():
        return _train_and_report(config, world, resume, overwrite, progress, dataset, may_change, iwae_k,
                                 eval_limit)


def _train_and_report(config: TrainConfig, world, resume: bool, overwrite: bool, progress: bool,
                      dataset, may_change, iwae_k: int, eval_limit: int | None) -> dict:
    from .evaluation import evaluate_run, format_summary
    from .plots import draw_run_figures, run_title

    # train checks the run directory and a resumed run's settings before it reads the data
    trained = train(config, dataset, resume=resume, overwrite=overwrite,
                    progress=progress and world.is_main, may_change=may_change)
    history, dataset = trained.history, trained.dataset
    say = print if world.is_main else (lambda *_: None)
    if world.is_main:
        figures = draw_run_figures(trained.model, history, dataset.test.images, Path(config.run_dir),
                                   run_title(config.to_dict()))
        say(f"figures: {', '.join(str(f) for f in figures)}")
    report = None
    if config.eval_samples:  # the model in memory: no reload from disk to score it
        report = evaluate_run(config.run_dir, config.eval_samples, "test", config.device,
                              progress=progress and world.is_main, dataset=dataset, iwae_k=iwae_k,
                              limit=eval_limit, trained=(trained.model, config.to_dict()))
        say(format_summary(report))
    say(f"run directory: {config.run_dir}")
    return {"history": history, "eval": report}
