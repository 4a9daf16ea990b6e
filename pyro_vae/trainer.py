"""The training loop: the ELBO's differentiable loss driven by a torch optimizer, epoch by epoch.

One step is ``elbo.differentiable_loss(vae.model, vae.guide, x).backward(); optimizer.step()``:
the same gradients as ``pyro.infer.SVI.step`` (a test checks it) without its per-step host
sync (with ``trace``, ``iwae`` and ``renyi`` none is left; Pyro's TraceMeanField_ELBO still reads
its loss inside ``differentiable_loss``). Losses stay on the device and are read every ``sync_every`` steps (every step on the CPU,
where reading is free). Each epoch ends with valid/test ELBOs, an atomic checkpoint and a
metrics row; Ctrl-C saves a checkpoint at the current step so ``--resume`` continues exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pyro
import torch
from pyro.infer import Trace_ELBO
from tqdm.auto import tqdm

from . import distributed, runs
from .cli import Interrupted, TrainingFailed, UsageError  # noqa: F401 (Interrupted re-exported)
from .data import Dataset, load_dataset
from .model import VAE
from .objectives import MAX_PLATE_NESTING, make_elbo
from .seeds import SEED_STRIDE

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
    jit: bool = False
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
        raise UsageError(f"--ema-decay must be in [0, 1), got {decay}")
    if not decay:
        return None
    return torch.optim.swa_utils.AveragedModel(
        vae, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown --device {name!r}; choose from auto, cpu, cuda") from None


def world_and_device(name: str) -> tuple[distributed.World, torch.device]:
    """The process group (joined if torchrun started us) and this rank's device."""
    device = resolve_device(name)
    world = distributed.init_world(device)
    return world, distributed.local_device(device, world)


def make_optimizer(config: TrainConfig, parameters) -> torch.optim.Optimizer:
    if config.optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown --optimizer {config.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    if config.lr_schedule not in LR_SCHEDULES:
        raise UsageError(f"unknown --lr-schedule {config.lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
    # the fused kernel is the same Adam, about 10% faster a step on the CPU
    extra = {"eps": config.adam_eps, "fused": True} if config.optimizer == "adam" else {}
    return OPTIMIZERS[config.optimizer](parameters, lr=learning_rate(config, 0), **extra)


BURDA_EPOCHS = 3280  # sum of 3^i, i = 0..7


def burda_lr(epoch: int, base_lr: float = 1e-3, total_epochs: int = BURDA_EPOCHS, stages: int = 8) -> float:
    """Burda et al.'s schedule: stage i lasts 3^i epochs at base_lr * 10^(-i/7), i = 0..7
    (3,280 epochs in all). For another `total_epochs` every stage is scaled by
    total_epochs / 3280 (its end rounded to the nearest epoch; a stage may vanish), so a
    shorter run still ends at the last rate. Epochs past the end keep the last rate."""
    end = 0
    for stage in range(stages):
        end += 3**stage
        if epoch < round(end * total_epochs / BURDA_EPOCHS):
            return base_lr * 10 ** (-stage / 7)
    return base_lr * 10 ** (-(stages - 1) / 7)


def burda_equal_lr(epoch: int, base_lr: float, total_epochs: int, stages: int = 8) -> float:
    """Burda et al.'s eight rates, base_lr * 10^(-i/7), in stages of equal length: a shorter
    run than theirs spends more of its updates at the higher rates than the scaled 3^i
    stages would (which give the first rate under 1/3280 of the run)."""
    stage = min(stages - 1, epoch * stages // total_epochs)
    return base_lr * 10 ** (-stage / 7)


LR_SCHEDULES = ("constant", "burda", "burda-equal")


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The learning rate of a (0-based) epoch; a function of the epoch alone, so resuming keeps it."""
    base = config.lr if config.lr is not None else DEFAULT_LR[config.optimizer]
    length = config.schedule_epochs or config.epochs
    if config.lr_schedule == "burda":
        return burda_lr(epoch, base, length)
    if config.lr_schedule == "burda-equal":
        return burda_equal_lr(epoch, base, length)
    return base


def make_step(vae: VAE, elbo, optimizer: torch.optim.Optimizer, validate_every_step: bool = False,
              after_backward: Callable[[], None] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """One gradient step on a batch; returns the loss (-ELBO summed over the batch) on-device.

    Pyro's argument and shape validation runs on the first step only (it catches model/guide
    mismatches there); afterwards it costs about 1 ms a step on the CPU and a host sync on GPUs,
    and a NaN that it would have caught still shows up in the loss, which the trainer checks.
    """
    use_loss_and_grads = not hasattr(elbo, "differentiable_loss")
    validated = False

    def step(x: torch.Tensor) -> torch.Tensor:
        nonlocal validated
        checks = contextlib.nullcontext() if validate_every_step or not validated else \
            pyro.validation_enabled(False)
        with checks:
            optimizer.zero_grad(set_to_none=True)
            if use_loss_and_grads:  # estimators that only offer loss_and_grads (it calls backward)
                loss = torch.as_tensor(elbo.loss_and_grads(vae.model, vae.guide, x), device=x.device)
            else:
                loss = elbo.differentiable_loss(vae.model, vae.guide, x)
                loss.backward()
                loss = loss.detach()
            if after_backward is not None:  # e.g. summing gradients across ranks
                after_backward()
            optimizer.step()
        validated = True
        return loss
    return step


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


def _nonfinite_report(vae: VAE, epoch: int, step: int, loss: float, error: Exception | None = None) -> str:
    bad = [name for name, p in vae.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        where = f"parameters {', '.join(bad[:3])} are non-finite (a gradient was non-finite earlier)"
    elif error is not None:
        where = f"the parameters are finite; {str(error).splitlines()[0][:150]} (check the data)"
    else:
        where = "the parameters are finite (the loss itself overflowed, or the data holds NaN)"
    return (f"the loss (-ELBO) is {loss} at epoch {epoch + 1}, step {step + 1}; {where}. "
            "The last good checkpoint is kept; try a lower --lr")


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an earlier run by mistake, or to resume one that is not there."""
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pass one")
    if resume and not (run_dir / runs.CHECKPOINT_FILE).exists():
        raise UsageError(f"--resume: {run_dir} holds no {runs.CHECKPOINT_FILE} to resume from")
    if not resume and not overwrite and runs.is_run_dir(run_dir):
        raise UsageError(f"{run_dir} already holds a run; pass --resume to continue it or "
                         "--overwrite to replace it")


# settings a resumed run may change; every other one is the run's own
RESUMABLE_SETTINGS = frozenset({"epochs", "device", "eval_samples", "data_dir", "run_dir", "max_seconds"})


def differs(given, stored) -> bool:
    if isinstance(given, (list, tuple)) and isinstance(stored, (list, tuple)):
        return list(given) != list(stored)
    return given != stored


def refuse_changed_settings(run_dir: Path, stored: dict, config: dict,
                            may_change: Iterable[str] = RESUMABLE_SETTINGS) -> None:
    """A run resumed or re-run keeps its settings: refuse the first one that ``config`` changes.
    (binarize None means the data set's default, which the stored config has resolved.)"""
    defaults = TrainConfig().to_dict()  # a setting added since the run was made had its default
    for key, value in config.items():
        if key in may_change or key == "versions" or (key == "binarize" and value is None):
            continue
        if differs(value, stored.get(key, defaults.get(key))):
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{run_dir} was trained with {flag} {_show(stored.get(key, defaults.get(key)))}, not "
                             f"{_show(value)}; a resumed run keeps its settings (use another run "
                             "directory for new ones)")


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "(none)"
    return "(default)" if value is None else str(value)


def train(config: TrainConfig, dataset: Dataset | None = None, resume: bool = False,
          overwrite: bool = False, progress: bool = True,
          log: Callable[[str], None] = print,
          may_change: Iterable[str] = RESUMABLE_SETTINGS) -> list[dict]:
    """Train (or resume) the run in ``config.run_dir``; returns the metrics history.

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
           log: Callable[[str], None], may_change: Iterable[str]) -> list[dict]:
    check_run_dir(run_dir, resume, overwrite)
    checkpoint_path = run_dir / runs.CHECKPOINT_FILE
    metrics_path = run_dir / runs.METRICS_FILE
    state = runs.load_checkpoint(checkpoint_path) if resume else None  # on the CPU: read once
    if state is not None:
        refuse_changed_settings(run_dir, state["config"], config.to_dict(), may_change)
        rank_states = state.get("rng_ranks") or [state["rng"]]
        if len(rank_states) != world.size:
            raise UsageError(f"{checkpoint_path} was written by {len(rank_states)} process(es); "
                             f"resume it with the same number, not {world.size}")
    if not world.is_main:
        log = _quiet
        progress = False
    if dataset is None:
        dataset = load_dataset(config.dataset, config.binarize, config.data_dir, device,
                               config.train_size, config.valid_size)
    config.binarize = dataset.binarize
    if config.batch_size * world.size > len(dataset.train):
        raise UsageError(f"--batch-size {config.batch_size} x {world.size} process(es) is larger than the "
                         f"{len(dataset.train)} training images")
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)  # the same initial parameters on every rank
    vae = runs.build_vae(config.to_dict()).to(device)
    if world.active:  # but each rank its own samples
        pyro.set_rng_seed(config.seed + SEED_STRIDE * (world.rank + 1))
    elbo = make_elbo(config.elbo, config.num_particles, config.vectorize_particles, config.jit,
                     **config.extra)
    optimizer = make_optimizer(config, vae.parameters())
    average = make_weight_average(vae, config.ema_decay)
    evaluated = average.module if average is not None else vae  # the weights the run is scored by
    distributed.barrier(world)  # every rank has checked the run directory before rank 0 writes
    if overwrite and world.is_main:
        runs.clear_run_outputs(run_dir)

    start_epoch, start_step, history = 0, 0, []
    saved_losses, saved_seconds = None, 0.0
    if state is not None:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if average is not None and "model_ema" in state:  # else the average starts here
            average.module.load_state_dict(state["model_ema"])
            average.n_averaged.fill_(state["ema_updates"])
        runs.set_rng_state(rank_states[world.rank])
        start_epoch, start_step, history = state["epoch"], state["step"], list(state["history"])
        saved_losses, saved_seconds = state.get("epoch_losses"), state.get("epoch_seconds", 0.0)
        if world.active:
            saved_losses = state["epoch_losses_ranks"][world.rank] if start_step else None
        if world.is_main:
            runs.write_metrics(metrics_path, history)  # the checkpoint's history is the truth
    if world.is_main:
        runs.write_json(run_dir / runs.CONFIG_FILE, {**config.to_dict(), "versions": _versions()})

    def checkpoint(epoch: int, step: int, epoch_losses=None, epoch_seconds=0.0) -> None:
        extra = {} if epoch_losses is None else {"epoch_losses": epoch_losses, "epoch_seconds": epoch_seconds}
        if average is not None:
            extra.update(model_ema=average.module.state_dict(), ema_updates=int(average.n_averaged))
        rng = runs.rng_state()
        if world.active:  # every rank's RNG and partial losses, so a resume is exact
            extra["rng_ranks"] = distributed.gather_objects(rng, world)
            if epoch_losses is not None:
                extra["epoch_losses_ranks"] = distributed.gather_objects(epoch_losses, world)
        if world.is_main:
            runs.save_checkpoint(checkpoint_path, {
                "config": config.to_dict(), "model": vae.state_dict(),
                "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                "history": history, "rng": rng, **extra})
        distributed.barrier(world)

    if not resume and world.is_main:
        log(f"{config.dataset} ({dataset.binarize}): {len(dataset.train)} train, {len(dataset.valid)} "
            f"valid, {len(dataset.test)} test images on {device}; initial test ELBO "
            f"{estimate_elbo(vae, dataset.test.images):.2f} nats/image")
    step_fn = make_step(vae, elbo, optimizer,
                        after_backward=(lambda: distributed.sum_gradients(vae.parameters())) if world.active else None)
    num_batches = dataset.num_batches(config.batch_size * world.size)
    sync_every = 1 if device.type == "cpu" else 50
    spent = sum(row["epoch_seconds"] for row in history)
    with _StopFlag() as stop:
        for epoch in range(start_epoch, config.epochs):
            if config.max_seconds and spent >= config.max_seconds:
                break
            lr = learning_rate(config, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            losses = torch.zeros(num_batches, device=device)
            first = start_step if epoch == start_epoch else 0
            if first and saved_losses is not None:
                losses[:first] = saved_losses.to(device)
            elapsed = saved_seconds if first else 0.0
            started = time.perf_counter()
            bar = tqdm(total=num_batches, initial=first, desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=None if progress else True, leave=False, dynamic_ncols=True)
            checked = first
            done = num_batches
            batches = dataset.train_batches(epoch, config.batch_size, config.seed, first, world.rank, world.size)
            for step, x in enumerate(batches, first):
                if distributed.any_rank(stop.requested, device) if world.active else stop.requested:
                    bar.close()
                    checkpoint(epoch, step, epoch_losses=losses[:step].cpu(),
                               epoch_seconds=elapsed + time.perf_counter() - started)
                    raise Interrupted(f"interrupted at epoch {epoch + 1}, step {step}; checkpoint saved")
                try:
                    losses[step] = step_fn(x)
                except ValueError as error:  # distribution validation: NaN parameters or data
                    bar.close()
                    raise TrainingFailed(_nonfinite_report(vae, epoch, step, math.nan, error)) from None
                if average is not None:
                    average.update_parameters(vae)
                if (step + 1) % sync_every == 0 or step + 1 == num_batches:
                    recent = losses[checked:step + 1].cpu()
                    if not torch.isfinite(recent).all():
                        bad = checked + int((~torch.isfinite(recent)).nonzero()[0])
                        bar.close()
                        raise TrainingFailed(_nonfinite_report(vae, epoch, bad, float(losses[bad])))
                    bar.update(step + 1 - checked)
                    bar.set_postfix(elbo=f"{-recent.mean().item() / x.shape[0]:.2f}")
                    checked = step + 1
                if config.max_seconds and spent + elapsed + time.perf_counter() - started >= config.max_seconds:
                    done = step + 1  # the budget is spent: close this epoch early, then stop
                    break
            bar.close()
            seconds = elapsed + time.perf_counter() - started
            spent += seconds
            trained = min(len(dataset.train), done * config.batch_size * world.size)
            loss_sum = losses[:done].sum().item()
            if world.active:
                loss_sum = distributed.sum_scalar(loss_sum, device)
            row = {
                "epoch": epoch + 1,
                "images_seen": (history[-1]["images_seen"] if history else 0) + trained,
                "train_elbo": -loss_sum / trained,
                # rank 0 alone writes rows: the other ranks need not score the model
                "valid_elbo": estimate_elbo(evaluated, dataset.valid.images) if world.is_main else math.nan,
                "test_elbo": estimate_elbo(evaluated, dataset.test.images) if world.is_main else math.nan,
                "epoch_seconds": round(seconds, 3),
                "lr": lr,
            }
            history.append(row)
            checkpoint(epoch + 1, 0)
            if epoch + 1 in config.snapshot_epochs and world.is_main:
                runs.save_checkpoint(run_dir / runs.SNAPSHOT_DIR / f"epoch-{epoch + 1:05d}.pt",
                                     {"config": config.to_dict(), "model": evaluated.state_dict(), "epoch": epoch + 1})
            if world.is_main:
                runs.append_metrics(metrics_path, row)
            if done < num_batches:
                log(f"wall-time budget of {config.max_seconds:g} s spent after {done} steps of epoch {epoch + 1}")
                break
            valid = f"valid {row['valid_elbo']:.2f}  " if len(dataset.valid) else ""
            log(f"epoch {epoch + 1}/{config.epochs}  train ELBO {row['train_elbo']:.2f}  "
                f"{valid}test {row['test_elbo']:.2f}  nats/image  ({seconds:.1f} s)")
    return history


def _quiet(_: str) -> None:
    pass


def _versions() -> dict:
    return {"torch": torch.__version__, "pyro": pyro.__version__, "python": sys.version.split()[0]}
