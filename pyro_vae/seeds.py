"""The seeds of independent random streams, derived from one seed, and draws kept apart from
the run's stream."""

import torch

SEED_STRIDE = 1_000_003  # a prime: seed * stride + index never repeats for indices below it


def derived_seed(seed: int, index: int) -> int:
    """The seed of stream ``index`` (an epoch's batch order, an image batch's samples)."""
    return (seed * SEED_STRIDE + index) % 2**63


def forked_rng(device: torch.device):
    """``torch.random.fork_rng`` over the generators that ``device`` draws from: draws made inside
    leave the run's random stream as it was."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
