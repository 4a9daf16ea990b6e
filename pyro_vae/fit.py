"""The training loop of any Pyro model and guide: ``pyro_vae.fit``.

    for epoch in range(epochs):
        for x in minibatches(data, epoch):
            loss = elbo.differentiable_loss(module.model, module.guide, x)
            loss.backward(); optimizer.step()

``module`` is any ``nn.Module`` with ``model(x)`` and ``guide(x)`` methods, ``elbo`` any Pyro ELBO
(with ``differentiable_loss``, or only ``loss_and_grads``), ``data`` a tensor of items (shuffled
each epoch by a permutation fixed by the seed and the epoch) or a :class:`~pyro_vae.data.Dataset`.
Everything else a long run needs (resuming, weight averaging, a stop on a non-finite loss,
progress, metrics, checkpoints, a wall-time budget, Ctrl-C) is a :class:`Callback`; trainer.py
holds those that ``python -m pyro_vae.train`` uses.

A step's loss stays on the device: the loop never reads it (callbacks read the epoch's losses
when they need them), and Pyro's argument checks run on the first step only.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pyro
import torch
from torch import nn

from . import runs
from .data import epoch_batches
from .seeds import forked_rng


class TrainingFailed(RuntimeError):
    """The work started but could not go on (e.g. a non-finite loss)."""


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C after saving a checkpoint; the message says where."""


@dataclass
class FitState:
    """Where the loop is; callbacks read it, and may set ``stop`` or (before the first epoch)
    the position to resume from."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    epochs: int
    num_batches: int
    batch_size: int
    epoch: int = 0  # the epoch running (0-based); after the loop, where it stopped
    step: int = 0  # the next step of this epoch
    history: list[dict] = field(default_factory=list)  # one row per finished epoch
    losses: torch.Tensor | None = None  # this epoch's per-step losses (-bound summed over the batch)
    resumed_losses: torch.Tensor | None = None  # the losses of the steps before `step`, when resumed
    resumed_seconds: float = 0.0  # and the time they took
    stop: bool = False  # set by a callback: close this epoch after the current step, then end
    loss_sum: float = 0.0  # the finished epoch's summed loss, on this process
    _started: float = 0.0

    def seconds(self) -> float:
        """Time spent in this epoch's steps so far (with the part before a resume)."""
        return self.resumed_seconds + time.perf_counter() - self._started


class Callback:
    """Hooks around the loop; each does nothing unless overridden."""

    def on_fit_start(self, state: FitState) -> None:
        """Before the first epoch: a resume sets state.epoch, step, history, resumed_*."""

    def on_epoch_start(self, state: FitState) -> None:
        """May set state.stop to end before the epoch runs."""

    def on_step_start(self, state: FitState) -> None:
        """Before the step at state.step (e.g. a Ctrl-C check)."""

    def after_backward(self, state: FitState) -> None:
        """Between backward and the optimizer's step (e.g. summing gradients across ranks)."""

    def on_step_end(self, state: FitState) -> None:
        """After the optimizer's step; state.losses[state.step] holds its loss."""

    def on_epoch_end(self, state: FitState, row: dict) -> None:
        """The epoch's row (epoch, images_seen, train_elbo, epoch_seconds) is in state.history:
        add to it, save it."""

    def on_fit_end(self, state: FitState) -> None:
        """After the loop, also when it raised: release what on_fit_start took."""


class TensorBatches:
    """Minibatches of a tensor of items, shuffled by a permutation fixed by (seed, epoch)."""

    def __init__(self, items: torch.Tensor):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self.items) // batch_size)

    def train_batches(self, epoch: int, batch_size: int, seed: int, start: int = 0, rank: int = 0,
                      world_size: int = 1) -> Iterator[torch.Tensor]:
        return epoch_batches(self.items, epoch, batch_size, seed, start, rank, world_size)


class Checkpoint(Callback):
    """After each epoch, save what a resume needs to go on exactly (weights, optimizer, position,
    history, the RNG states) to ``path``, atomically; with ``resume``, start from that file (or
    from an already loaded checkpoint dict) instead of from scratch.

    :param path: the checkpoint file (written through a temporary file and a rename).
    :param resume: False to start afresh, True to resume from ``path``, or a checkpoint dict
        already loaded (with ``torch.load(..., weights_only=True)``).
    """

    def __init__(self, path: str | os.PathLike, resume: bool | dict = False):
        self.path, self.resume = Path(path), resume

    def contents(self, state: FitState, epoch: int, step: int) -> dict:
        return {"model": state.module.state_dict(), "optimizer": state.optimizer.state_dict(), "epoch": epoch,
                "step": step, "history": state.history, "rng": runs.rng_state()}

    def save(self, state: FitState, epoch: int, step: int, **extra) -> None:
        runs.save_checkpoint(self.path, {**self.contents(state, epoch, step), **extra})

    def restore(self, saved: dict, state: FitState) -> None:
        state.module.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        runs.set_rng_state(saved["rng"])
        state.epoch, state.step, state.history = saved["epoch"], saved["step"], list(saved["history"])
        state.resumed_losses, state.resumed_seconds = saved.get("epoch_losses"), saved.get("epoch_seconds", 0.0)

    def on_fit_start(self, state: FitState) -> None:
        if self.resume is not False:
            self.restore(runs.load_checkpoint(self.path) if self.resume is True else self.resume, state)

    def on_epoch_end(self, state: FitState, row: dict) -> None:
        self.save(state, state.epoch + 1, 0)


def make_step(module: nn.Module, elbo, optimizer: torch.optim.Optimizer, validate_every_step: bool = False,
              after_backward: Callable[[], None] | None = None,
              compile: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """One gradient step on a batch; returns the loss (-ELBO summed over the batch) on-device.

    Pyro's argument and shape validation runs on the first step only (it catches model/guide
    mismatches there); afterwards it costs about 1 ms a step on the CPU and a host sync on GPUs,
    and a NaN that it would have caught still shows up in the loss, which a callback checks.
    With ``compile``, the loss and its gradients come from a graph traced and compiled at the
    first step (compiled.py); the first step's validation then runs on a forked random stream,
    so that the run's draws do not depend on where it was resumed.
    """
    use_loss_and_grads = not hasattr(elbo, "differentiable_loss")
    compiled = None
    if compile:
        from .compiled import CompiledLoss

        compiled = CompiledLoss(module, elbo)
    validated = False

    def step(x: torch.Tensor) -> torch.Tensor:
        nonlocal validated
        if compiled is not None and compiled.accepts(x):
            if not validated:  # Pyro's checks, once, on draws the run does not use
                with forked_rng(x.device), torch.no_grad():
                    elbo.differentiable_loss(module.model, module.guide, x)
            optimizer.zero_grad(set_to_none=True)
            loss = compiled.set_gradients(x)
        else:
            checks = contextlib.nullcontext() if validate_every_step or not validated else \
                pyro.validation_enabled(False)
            with checks:
                optimizer.zero_grad(set_to_none=True)
                if use_loss_and_grads:  # estimators that only offer loss_and_grads (it calls backward)
                    loss = torch.as_tensor(elbo.loss_and_grads(module.model, module.guide, x), device=x.device)
                else:
                    loss = elbo.differentiable_loss(module.model, module.guide, x)
                    if loss.requires_grad:  # a program without parameters has nothing to differentiate
                        loss.backward()
                    loss = loss.detach()
        if after_backward is not None:  # e.g. summing gradients across ranks
            after_backward()
        optimizer.step()
        validated = True
        return loss
    return step


def fit(module: nn.Module, data, elbo, *, epochs: int, batch_size: int,
        optimizer: torch.optim.Optimizer | None = None, callbacks: Sequence[Callback] = (), seed: int = 0,
        rank: int = 0, world_size: int = 1, compile: bool = False) -> FitState:
    """Train ``module.model`` and ``module.guide`` on ``data`` with ``elbo``; returns the final
    state, whose ``history`` holds one row per epoch (``train_elbo``: the mean of the training
    objective over the epoch, in nats per item). ``optimizer`` defaults to Adam(lr 1e-3).
    With several processes, rank r of ``world_size`` takes the r-th slice of each step's items.
    ``compile`` traces the step once and compiles it (compiled.py: same draws, same numbers up
    to floating-point rounding, a one-off compilation of tens of seconds).

    :param torch.nn.Module module: holds ``model`` and ``guide`` methods and their parameters.
    :param data: a tensor of items along dim 0, or a batches object (``data.epoch_batches``).
    :param elbo: a Pyro ELBO, e.g. from :func:`make_elbo`.
    :param int epochs: passes over the data.
    :param int batch_size: items per step (per process).
    :param optimizer: a torch optimizer over ``module``'s parameters.
    :param callbacks: :class:`Callback` objects (e.g. :class:`Checkpoint`), called in order.
    :param int seed: the random seed of the shuffles and draws.
    :param int rank: this process's rank, for data-parallel runs.
    :param int world_size: the number of processes.
    :param bool compile: compile the step (``torch.compile`` of the traced step).
    :returns: the final :class:`FitState`.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}")
    batches = TensorBatches(data) if isinstance(data, torch.Tensor) else data
    if batch_size * world_size > len(batches):
        raise ValueError(f"a step of {batch_size * world_size} items is larger than the {len(batches)} items")
    optimizer = optimizer if optimizer is not None else torch.optim.Adam(module.parameters(), lr=1e-3)
    state = FitState(module, optimizer, epochs, batches.num_batches(batch_size * world_size), batch_size)
    # the per-step hooks only of the callbacks that have them: no Python per step for the others
    step_start, backward, step_end = (_overriding(callbacks, hook)
                                      for hook in ("on_step_start", "after_backward", "on_step_end"))
    step = make_step(module, elbo, optimizer,
                     after_backward=(lambda: [hook(state) for hook in backward]) if backward else None,
                     compile=compile)
    try:
        for callback in callbacks:
            callback.on_fit_start(state)
        first_epoch, first_step = state.epoch, state.step
        for state.epoch in range(first_epoch, epochs):
            state.step = first_step if state.epoch == first_epoch else 0
            for callback in callbacks:
                callback.on_epoch_start(state)
            if state.stop:
                break
            state.losses = torch.zeros(state.num_batches, device=next(module.parameters()).device)
            if state.step and state.resumed_losses is not None:
                state.losses[:state.step] = state.resumed_losses.to(state.losses.device)
            else:
                state.resumed_seconds = 0.0
            state._started = time.perf_counter()
            done = state.num_batches
            for x in batches.train_batches(state.epoch, batch_size, seed, state.step, rank, world_size):
                for hook in step_start:
                    hook(state)
                try:
                    state.losses[state.step] = step(x)
                except ValueError as error:
                    if not _about_nan(module, x, error):  # a structural error keeps its type and message
                        raise
                    raise TrainingFailed(nonfinite_report(module, state.epoch, state.step, math.nan, error)) from None
                for hook in step_end:
                    hook(state)
                state.step += 1
                if state.stop:
                    done = state.step
                    break
            trained = min(len(batches), done * batch_size * world_size)
            state.loss_sum = state.losses[:done].sum().item()
            row = {"epoch": state.epoch + 1,
                   "images_seen": (state.history[-1]["images_seen"] if state.history else 0) + trained,
                   "train_elbo": -state.loss_sum / trained,
                   "epoch_seconds": round(state.seconds(), 3)}
            state.history.append(row)
            for callback in callbacks:
                callback.on_epoch_end(state, row)
            if state.stop:
                break
        else:
            state.epoch = epochs
    finally:
        for callback in callbacks:
            callback.on_fit_end(state)
    return state


def _overriding(callbacks: Sequence[Callback], hook: str) -> list[Callable[[FitState], None]]:
    """The bound ``hook`` methods of the callbacks that override Callback's empty one."""
    return [getattr(c, hook) for c in callbacks if getattr(type(c), hook) is not getattr(Callback, hook)]


def _about_nan(module: nn.Module, x: torch.Tensor, error: ValueError) -> bool:
    """Whether a step's ValueError comes from a NaN: non-finite parameters or data, or Pyro's
    validation finding invalid (NaN) values in a distribution's parameters."""
    if any(not torch.isfinite(p).all() for p in module.parameters()):
        return True
    if x.is_floating_point() and not torch.isfinite(x).all():
        return True
    return re.search(r"\bnan\b", str(error).lower()) is not None


def nonfinite_report(module: nn.Module, epoch: int, step: int, loss: float, error: Exception | None = None) -> str:
    """What went non-finite, and where: for a one-line error."""
    bad = [name for name, p in module.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        where = f"parameters {', '.join(bad[:3])} are non-finite (a gradient was non-finite earlier)"
    elif error is not None:
        where = f"the parameters are finite; {str(error).splitlines()[0]} (check the data)"
    else:
        where = "the parameters are finite (the loss itself overflowed, or the data holds NaN)"
    return (f"the loss (-ELBO) is {loss} at epoch {epoch + 1}, step {step + 1}; {where}. "
            "The last good checkpoint is kept; try a lower learning rate")
