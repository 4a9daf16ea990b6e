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


class ReferenceVAE(nn.Module):
    def __init__(self, latent_dim: int = 20, hidden: int = 500, pixels: int = 784):
        super().__init__()
        self.enc_hidden = nn.Linear(pixels, hidden)
        self.enc_loc = nn.Linear(hidden, latent_dim)
        self.enc_log_var = nn.Linear(hidden, latent_dim)
        self.dec_hidden = nn.Linear(latent_dim, hidden)
        self.dec_logits = nn.Linear(hidden, pixels)

    def loss(self, x: torch.Tensor, particles: int = 1, iwae: bool = False) -> torch.Tensor:
        h = torch.tanh(self.enc_hidden(x))
        loc, log_var = self.enc_loc(h), self.enc_log_var(h)
        scale = torch.exp(0.5 * log_var)
        eps = torch.randn((particles, *loc.shape), device=x.device)
        z = loc + scale * eps
        logits = self.dec_logits(torch.tanh(self.dec_hidden(z)))
        log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_prior = -0.5 * (z**2 + LOG_2PI).sum(-1)
        log_q = -0.5 * (eps**2 + LOG_2PI).sum(-1) - torch.log(scale).sum(-1)
        log_w = log_lik + log_prior - log_q  # (particles, batch)
        if iwae:
            return -(torch.logsumexp(log_w, 0) - math.log(particles)).sum()
        return -log_w.mean(0).sum()

    forward = loss  # for torch.func.functional_call (the compiled reference step)
