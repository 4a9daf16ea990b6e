"""Data parallelism with torch.distributed, for commands launched by ``torchrun``.

Training: every rank holds the whole model and data; each step, rank r takes its own slice of
the step's images (the global batch is ``--batch-size`` x world size) and, after the ELBO's
backward, the gradients are summed across ranks with ``all_reduce``. The loss is a sum over
images, so the summed gradient is the gradient of the combined batch: N ranks at batch B train
exactly as one process at batch N x B. The model and guide stay plain Pyro programs (no DDP
wrapper is needed around them). Rank 0 alone writes files.

Evaluation: image batches are dealt round-robin to the ranks and gathered on rank 0; each
batch is seeded by its index, so the figures do not depend on the number of ranks.

Backend: ``nccl`` on CUDA, ``gloo`` on the CPU.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_world(device: torch.device) -> World:
    """Join the process group torchrun set up (a no-op World of one without torchrun)."""
    if not launched_by_torchrun():
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        # left to the interpreter's exit, gloo's threads are destroyed while joinable: SIGABRT
        atexit.register(dist.destroy_process_group)
    return current_world()


def current_world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def local_device(device: torch.device, world: World) -> torch.device:
    """On CUDA each rank uses the GPU of its local rank: one GPU per process."""
    if device.type == "cuda" and world.active:
        gpus = torch.cuda.device_count()
        if world.local_rank >= gpus:
            raise ValueError(f"torchrun started more processes on this machine than its {gpus} GPU(s): "
                             f"start at most {gpus} per machine, or train on the CPU")
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return device


def sum_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Sum every gradient across ranks (one flattened all-reduce)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    at = 0
    for g in grads:
        g.copy_(flat[at:at + g.numel()].view_as(g))
        at += g.numel()


def sum_scalar(value: float, device: torch.device) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item()


def any_rank(flag: bool, device: torch.device) -> bool:
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor)
    return tensor.item() > 0


def gather_objects(obj, world: World) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()
