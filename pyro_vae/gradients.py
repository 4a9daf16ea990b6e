"""Gradient-estimator statistics: per-parameter variance and signal-to-noise ratio.

For a stochastic loss whose gradient g is drawn R times (fresh samples of z each time),

    mean_j = (1/R) sum_r g_rj,    var_j = 1/(R-1) sum_r (g_rj - mean_j)^2,    SNR_j = |mean_j| / sqrt(var_j)

per scalar parameter j, accumulated in float64 with Welford's update (Rainforth et al. 2018,
"Tighter variational bounds are not necessarily better", define SNR this way and report it
separately for the inference network and the generative network).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch


class RunningMoments:
    """Welford's streaming mean and variance of a vector, in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def add(self, value: torch.Tensor) -> None:
        value = value.detach().double()
        if self.mean is None:
            self.mean, self._m2 = torch.zeros_like(value), torch.zeros_like(value)
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (value - self.mean)

    @property
    def variance(self) -> torch.Tensor:
        return self._m2 / max(1, self.count - 1)


def gradient_moments(loss_fn: Callable[[], torch.Tensor], groups: dict[str, Sequence[torch.Tensor]],
                     repeats: int) -> dict[str, RunningMoments]:
    """Draw ``loss_fn()`` ``repeats`` times and collect the moments of its gradient with respect
    to each group of parameters (e.g. {"encoder": [...], "decoder": [...]})."""
    moments = {name: RunningMoments() for name in groups}
    every = [p for params in groups.values() for p in params]
    for _ in range(repeats):
        grads = torch.autograd.grad(loss_fn(), every, allow_unused=True)
        at = 0
        for name, params in groups.items():
            chunk = grads[at:at + len(params)]
            at += len(params)
            flat = torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                              for p, g in zip(params, chunk)])
            moments[name].add(flat)
    return moments


def snr_summary(moments: RunningMoments) -> dict[str, float]:
    """Median and mean SNR over the parameters whose gradient varies, and the mean variance."""
    std = moments.variance.sqrt()
    varying = std > 0
    snr = moments.mean.abs()[varying] / std[varying]
    return {
        "snr_median": snr.quantile(0.5).item() if snr.numel() else math.nan,
        "snr_mean": snr.mean().item() if snr.numel() else math.nan,
        "grad_variance_mean": moments.variance.mean().item(),
        "num_parameters": int(moments.mean.numel()),
    }
