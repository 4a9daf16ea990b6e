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

    forward = loss  # for torch.func.functional_call (the compiled reference step)


def compiled_step(ref: ReferenceVAE, optimizer: torch.optim.Optimizer, particles: int = 1, iwae: bool = False):
    """The plain-PyTorch step compiled the way pyro_vae's --compile compiles a Pyro step (loss and
    gradients traced by make_fx, compiled by inductor with torch's random numbers, replayed as a
    CUDA graph on CUDA): the fair baseline for the compiled step."""
    from torch.fx.experimental.proxy_tensor import make_fx

    names, params = zip(*ref.named_parameters())
    values = [p.detach() for p in params]

    def loss_and_grads(values, x):
        loss = torch.func.functional_call(ref, dict(zip(names, values)), (x, particles, iwae), strict=False)
        return loss.detach(), torch.autograd.grad(loss, values)
    compiled = {}

    def step(x):
        if "fn" not in compiled:
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                graph = make_fx(loss_and_grads)([v.clone().requires_grad_() for v in values], x)
            options = {"fallback_random": True, **({"triton.cudagraphs": True} if x.device.type == "cuda" else {})}
            compiled["fn"] = torch.compile(graph, dynamic=False, options=options)
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            loss, grads = compiled["fn"](values, x)
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        return loss
    return step
