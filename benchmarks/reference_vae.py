"""A hand-written plain-PyTorch VAE step: the same math and layer sizes as pyro_vae's seed model.

Kept for the benchmarks only; the package never uses it. The loss is the Monte-Carlo ELBO of
Trace_ELBO (log p(x|z) + log p(z) - log q(z|x) at z ~ q, averaged over L particles, summed
over the batch), or the IWAE bound (log-mean-exp over the particles) with ``iwae=True``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def tanh_layers(sizes) -> nn.Sequential:
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    return nn.Sequential(*layers)


class ReferenceVAE(nn.Module):
    """The seed net by default (784-500-20); ``hidden_dims=(200, 200), latent_dim=50`` is Burda et
    al.'s."""

    def __init__(self, latent_dim: int = 20, hidden_dims=(500,), pixels: int = 784):
        super().__init__()
        self.enc_hidden = tanh_layers([pixels, *hidden_dims])
        self.enc_loc = nn.Linear(hidden_dims[-1], latent_dim)
        self.enc_log_var = nn.Linear(hidden_dims[-1], latent_dim)
        self.dec_hidden = tanh_layers([latent_dim, *hidden_dims])
        self.dec_logits = nn.Linear(hidden_dims[-1], pixels)

    def loss(self, x: torch.Tensor, particles: int = 1, iwae: bool = False) -> torch.Tensor:
        h = self.enc_hidden(x)
        loc, log_var = self.enc_loc(h), self.enc_log_var(h)
        scale = torch.exp(0.5 * log_var)
        eps = torch.randn((particles, *loc.shape), device=x.device)
        z = loc + scale * eps
        logits = self.dec_logits(self.dec_hidden(z))
        log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_prior = -0.5 * (z**2 + LOG_2PI).sum(-1)
        log_q = -0.5 * (eps**2 + LOG_2PI).sum(-1) - torch.log(scale).sum(-1)
        log_w = log_lik + log_prior - log_q  # (particles, batch)
        if iwae:
            return -(torch.logsumexp(log_w, 0) - math.log(particles)).sum()
        return -log_w.mean(0).sum()


class _ReferenceLoss(nn.Module):
    """The reference's loss at fixed particles as a module's forward, for CompiledLoss."""

    def __init__(self, ref: ReferenceVAE, particles: int, iwae: bool):
        super().__init__()
        self.ref, self.particles, self.iwae = ref, particles, iwae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ref.loss(x, self.particles, self.iwae)


def compiled_step(ref: ReferenceVAE, optimizer: torch.optim.Optimizer, particles: int = 1, iwae: bool = False):
    """The plain-PyTorch step compiled by the very code that compiles pyro_vae's --compile step
    (pyro_vae.compiled.CompiledLoss: loss and gradients traced by make_fx, compiled by inductor
    with torch's random numbers, replayed as a CUDA graph on CUDA): the fair baseline."""
    from pyro_vae.compiled import CompiledLoss

    compiled = CompiledLoss(_ReferenceLoss(ref, particles, iwae))

    def step(x):
        optimizer.zero_grad(set_to_none=True)
        loss = compiled.set_gradients(x)
        optimizer.step()
        return loss
    return step
