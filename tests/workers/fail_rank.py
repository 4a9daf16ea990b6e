"""Run by tests/test_distributed.py under torchrun: rank 1 fails while rank 0 waits on it."""

import torch
import torch.distributed as dist

from pyro_vae import distributed

world = distributed.init_world(torch.device("cpu"))
if world.rank == 1:
    raise RuntimeError("rank 1 failed on purpose")
dist.all_reduce(torch.ones(1))  # would wait for rank 1 forever without torchrun's supervision
