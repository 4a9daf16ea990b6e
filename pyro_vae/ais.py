"""Annealed importance sampling (AIS) of log p(x), item by item, for a Pyro model and guide.

Neal (2001); for decoder-based models Wu, Burda, Salakhutdinov & Grosse (2017). Between the
initial density f_0 and the posterior p(z|x) ∝ p(x, z), a schedule 0 = β_0 < ... < β_T = 1
defines the intermediate densities

    init="guide":  f_β(z) = q(z|x)^(1-β) p(x, z)^β          (starts from the guide's draws)
    init="prior":  f_β(z) = p(z) p(x|z)^β                    (starts from the model's prior)

Each chain starts from a draw of f_0 and, for t = 1..T, adds the weight increment
log f_{β_t}(z) - log f_{β_{t-1}}(z) at its current z, then moves z by an HMC transition that
leaves f_{β_t} invariant. Then E[exp(log w)] = p(x), and per item

    log p^(x) = logsumexp_c log w_c - log C        (C chains)

is a stochastic lower bound, as importance sampling is, whose gap closes as T grows; with
T = 1 and init="guide" it is importance sampling with K = C (the same draws).

The latents are the guide's sample sites (for init="prior", the model's unobserved ones, which
must be the same names), every one with real support; log p(x, z) and log q(z|x) come from the
model and guide run on given values (``poutine.condition``), items and chains vectorized under
the "particles" plate, each term checked to be per item (program_check.py). An HMC transition
takes ``leapfrog_steps`` steps, each with one evaluation of both densities and their gradient;
the accept test and the next weight increment reuse the values at the last position. Step
sizes are per item and intermediate density, set by a pilot run that moves them after each
transition toward ``target_accept``: a step size tuned on the counted chains' own history
would bias their weights (measured: BDMC's reverse bound fell below the exact log p(x)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from pyro import poutine
from torch.distributions import constraints

from .marginal import batch_seed, mean_and_stderr, per_item_sum
from .program_check import Requirements, check_program, particles_plate, sample_sites
from .seeds import derived_seed, forked_rng

ADAPT_RATE = 0.1  # log step size moves by this times (acceptance - target) after each transition


def ais_schedule(schedule: str | Sequence[float], num_steps: int) -> torch.Tensor:
    """The β_0 = 0 < ... < β_T = 1 of a schedule: "linear", "sigmoid" (Grosse et al.'s, with
    δ = 4: rescaled sigmoid(δ (2t/T - 1))), or an explicit increasing sequence from 0 to 1."""
    if isinstance(schedule, str):
        if num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
        t = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
        if schedule == "linear":
            return t
        if schedule == "sigmoid":
            s = torch.sigmoid(4.0 * (2 * t - 1))
            return (s - s[0]) / (s[-1] - s[0])
        raise ValueError(f"unknown schedule {schedule!r}; choose linear, sigmoid, or give the betas")
    betas = torch.as_tensor(schedule, dtype=torch.float64)
    if betas.dim() != 1 or len(betas) < 2 or betas[0] != 0 or betas[-1] != 1 or not (betas[1:] > betas[:-1]).all():
        raise ValueError("an explicit schedule must increase strictly from 0 to 1")
    return betas


@dataclass
class AISResult:
    """Per-item AIS estimates: ``log_px`` (float64, one per item), the chains' ``log_weights``
    (chains, items), each item's mean HMC ``acceptance`` and its ``step_size`` at each
    intermediate density (steps, items), from the pilot run."""

    log_px: torch.Tensor
    log_weights: torch.Tensor
    acceptance: torch.Tensor
    step_size: torch.Tensor
    num_chains: int
    num_steps: int

    def summary(self) -> dict[str, float]:
        """Mean and standard error over items of log p^(x), and the mean acceptance rate."""
        mean, stderr = mean_and_stderr(self.log_px)
        return {"log_px_mean": mean, "log_px_stderr": stderr, "acceptance_mean": self.acceptance.mean().item()}


class _Densities:
    """log q(z|x) and log p(x, z), split into the latent sites' log p(z) and the rest, per
    (chain, item), at given latent values; and the energy of f_β and its gradient."""

    def __init__(self, model: Callable, guide: Callable, args: tuple, kwargs: dict, num_chains: int,
                 max_plate_nesting: int, batch: int, init: str):
        self.model, self.guide, self.args, self.kwargs = model, guide, args, kwargs
        self.num_chains, self.max_plate_nesting, self.batch, self.init = num_chains, max_plate_nesting, batch, init

    def _sum(self, trace, program: str, only=None, exclude=()):
        return per_item_sum(trace, program, self.num_chains, self.batch, self.max_plate_nesting, only, exclude)

    def evaluate(self, values: dict[str, torch.Tensor]):
        """At given latent values, per (chain, item): the energy of f_0 and its gradient, and the
        increment log f_1 - log f_0 (= d log f_β / dβ) and its gradient; f_β's energy is
        base - β increment, its gradient base_grad - β increment_grad."""
        values = {k: v.detach().requires_grad_() for k, v in values.items()}
        with particles_plate(self.num_chains, self.max_plate_nesting):
            conditioned_model = poutine.condition(self.model, data=values)
            model_trace = poutine.trace(conditioned_model).get_trace(*self.args, **self.kwargs)
            log_prior = self._sum(model_trace, "model", only=values)
            log_lik = self._sum(model_trace, "model", exclude=values)
            if self.init == "guide":
                conditioned_guide = poutine.condition(self.guide, data=values)
                guide_trace = poutine.trace(conditioned_guide).get_trace(*self.args, **self.kwargs)
                log_q = self._sum(guide_trace, "guide")
                base, increment = log_q, log_prior + log_lik - log_q
            else:
                base, increment = log_prior, log_lik
        inputs = list(values.values())
        base_grads = torch.autograd.grad(base.sum(), inputs, retain_graph=True, allow_unused=True)
        increment_grads = torch.autograd.grad(increment.sum(), inputs, allow_unused=True)

        def zero_if_none(grads):
            return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(values.items(), grads)}
        return (_State(-base.detach(), increment.detach(), {k: -g for k, g in zero_if_none(base_grads).items()},
                       zero_if_none(increment_grads)))


@dataclass
class _State:
    """The densities at a position: f_0's energy and gradient, the increment and its gradient."""

    base_energy: torch.Tensor
    increment: torch.Tensor
    base_grad: dict
    increment_grad: dict

    def energy(self, beta: float) -> torch.Tensor:
        return self.base_energy - beta * self.increment

    def grad(self, beta: float) -> dict:
        return {k: g - beta * self.increment_grad[k] for k, g in self.base_grad.items()}

    def where(self, accept: torch.Tensor, other: "_State") -> "_State":
        """This state where ``accept`` (chains, items), ``other`` elsewhere."""
        def pick(a, b):
            return torch.where(_broadcast(accept, a).bool(), a, b)
        return _State(pick(self.base_energy, other.base_energy), pick(self.increment, other.increment),
                      {k: pick(g, other.base_grad[k]) for k, g in self.base_grad.items()},
                      {k: pick(g, other.increment_grad[k]) for k, g in self.increment_grad.items()})


def _initial_values(model, guide, args, kwargs, num_chains, max_plate_nesting, init) -> dict[str, torch.Tensor]:
    with particles_plate(num_chains, max_plate_nesting), torch.no_grad():
        if init == "guide":
            trace = poutine.trace(guide).get_trace(*args, **kwargs)
        else:  # the model's prior: its latent sites drawn, its observed ones left observed
            trace = poutine.trace(model).get_trace(*args, **kwargs)
    latents = {name: site for name, site in sample_sites(trace) if not site["is_observed"]}
    _check_latents(latents)
    return {name: site["value"].detach() for name, site in latents.items()}


def _check_latents(sites: dict) -> None:
    """A ValueError naming a latent site whose support is not all of real space."""
    for name, site in sites.items():
        support = site["fn"].support
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        if support is not constraints.real:
            raise ValueError(f"latent site {name!r} has support {site['fn'].support}: AIS moves z by HMC in "
                             "real space, and this site is not there (reparameterize it to real values)")


def _broadcast(per_chain_item: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A (chains, items) tensor shaped to broadcast against a site's value."""
    return per_chain_item.reshape(per_chain_item.shape + (1,) * (value.dim() - 2)).to(value.dtype)


def _kinetic(momenta: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(0.5 * (r ** 2).reshape(r.shape[0], r.shape[1], -1).sum(-1) for r in momenta.values())


def ais_batch(model: Callable, guide: Callable, x: torch.Tensor, args: tuple, kwargs: dict, *, num_chains: int,
              betas: torch.Tensor, leapfrog_steps: int, init: str, target_accept: float, step_size: float,
              max_plate_nesting: int, start: dict[str, torch.Tensor] | None = None,
              step_sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log weights (chains, items) float64, mean acceptance per item, step sizes (steps, items))
    of AIS on one batch ``x`` of items. ``start`` (latent values, (chains, items, ...)) replaces
    the draws of f_0: with ``betas`` from 1 to 0 and ``start`` drawn from the posterior, this is
    reverse AIS, whose weights estimate 1 / p(x).

    Without ``step_sizes`` each item's step size adapts after every transition toward
    ``target_accept`` (from its chains' mean acceptance) and the sizes used are returned; that
    run is a pilot, since a kernel tuned on the chains' own history biases their weights. With
    ``step_sizes`` (from a pilot) they are fixed in advance and the weights are unbiased."""
    full_args = (x, *args)
    values = start if start is not None else _initial_values(model, guide, full_args, kwargs, num_chains,
                                                             max_plate_nesting, init)
    densities = _Densities(model, guide, full_args, kwargs, num_chains, max_plate_nesting, len(x), init)
    log_w = torch.zeros(num_chains, len(x), dtype=torch.float64, device=x.device)
    eps = torch.full((num_chains, len(x)), step_size, dtype=torch.float64, device=x.device)
    used = []
    accepted = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    state = densities.evaluate(values)
    for t in range(1, len(betas)):
        beta = float(betas[t])
        if step_sizes is not None:
            eps = step_sizes[t - 1].to(eps).expand(num_chains, -1)
        used.append(eps[0])
        log_w += (betas[t] - betas[t - 1]).item() * state.increment.double()  # at the current z
        momenta = {k: torch.randn_like(v) for k, v in values.items()}
        start_h = state.energy(beta) + _kinetic(momenta)
        position, new = dict(values), state
        grad = new.grad(beta)
        momenta = {k: r - 0.5 * _broadcast(eps, r) * grad[k] for k, r in momenta.items()}
        for step in range(leapfrog_steps):  # one evaluation of the densities and gradients a step
            position = {k: v + _broadcast(eps, v) * momenta[k] for k, v in position.items()}
            new = densities.evaluate(position)
            grad = new.grad(beta)
            factor = 0.5 if step == leapfrog_steps - 1 else 1.0
            momenta = {k: r - factor * _broadcast(eps, r) * grad[k] for k, r in momenta.items()}
        end_h = new.energy(beta) + _kinetic(momenta)
        accept_prob = torch.exp((start_h - end_h).double()).clamp(max=1.0).nan_to_num(0.0)
        accept = torch.rand_like(accept_prob) < accept_prob
        values = {k: torch.where(_broadcast(accept, v).bool(), position[k], v) for k, v in values.items()}
        state = new.where(accept, state)  # the accept test and the next increment reuse these
        accepted += accept_prob.mean(0)
        if step_sizes is None:  # one size per item, from its chains' mean acceptance
            eps = eps * torch.exp(ADAPT_RATE * (accept_prob.mean(0, keepdim=True) - target_accept))
    return log_w, accepted / max(1, len(betas) - 1), torch.stack(used)


PILOT_STREAM = 2**40  # the pilot runs' random streams, apart from every batch's own


def ais_with_pilot(model: Callable, guide: Callable, x: torch.Tensor, args: tuple, kwargs: dict, seed: int,
                   batch_index: int, num_chains: int, **settings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AIS on one batch in two runs: a pilot of a quarter of the chains (at least 2) that adapts
    each item's step size, then the run whose weights count, with the pilot's sizes fixed. The
    pilot draws from a stream of its own, so the counted run draws what AIS without a pilot
    would (at one step: importance sampling's draws)."""
    start = settings.pop("start", None)
    torch.manual_seed(derived_seed(seed, PILOT_STREAM + batch_index))
    pilot_chains = max(2, num_chains // 4)
    pilot_start = None if start is None else {k: v[:1].expand(pilot_chains, *v.shape[1:]).clone()
                                              for k, v in start.items()}
    _, _, step_sizes = ais_batch(model, guide, x, args, kwargs, num_chains=pilot_chains, start=pilot_start,
                                 **settings)
    torch.manual_seed(batch_seed(seed, batch_index))
    return ais_batch(model, guide, x, args, kwargs, num_chains=num_chains, start=start, step_sizes=step_sizes,
                     **settings)


def ais_log_likelihood(model: Callable, guide: Callable, data: torch.Tensor, *args, num_chains: int = 16,
                       num_steps: int = 100, leapfrog_steps: int = 10, init: str = "guide",
                       schedule: str | Sequence[float] = "sigmoid", target_accept: float = 0.65,
                       step_size: float = 0.1, seed: int = 0, max_plate_nesting: int = 1, batch_size: int = 100,
                       **kwargs) -> AISResult:
    """AIS estimate of log p(x) for each item of ``data`` (see the module's docstring).

    ``data`` goes in batches of ``batch_size`` items along dim 0, each passed as the first
    argument of ``model`` and ``guide`` (``*args`` and ``**kwargs`` after it), every sample site
    in the data plate (dim ``-max_plate_nesting``), as for :func:`estimate_log_likelihood`.
    ``schedule`` is "sigmoid", "linear" or the betas themselves (then ``num_steps`` is their
    number minus one); ``step_size`` is where each chain's HMC step size starts. A given
    ``seed`` gives the same numbers; the caller's random state is left as it was.
    """
    if init not in ("guide", "prior"):
        raise ValueError(f"init must be 'guide' or 'prior', got {init!r}")
    for name, value in (("num_chains", num_chains), ("leapfrog_steps", leapfrog_steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0 < target_accept < 1 or not step_size > 0:
        raise ValueError(f"target_accept must be in (0, 1) and step_size positive, got {target_accept}, {step_size}")
    if len(data) == 0:
        raise ValueError("data holds no items")
    betas = ais_schedule(schedule, num_steps)
    check_program(model, guide, (data[:batch_size], *args), kwargs, max_plate_nesting,
                  Requirements(vectorized=True, per_item=True, pathwise=False), "AIS")
    parts = []
    with forked_rng(data.device):
        for index, begin in enumerate(range(0, len(data), batch_size)):
            parts.append(ais_with_pilot(model, guide, data[begin:begin + batch_size], args, kwargs, seed, index,
                                        num_chains, betas=betas, leapfrog_steps=leapfrog_steps, init=init,
                                        target_accept=target_accept, step_size=step_size,
                                        max_plate_nesting=max_plate_nesting))
    log_w = torch.cat([p[0] for p in parts], dim=1)
    return AISResult(log_px=log_w.logsumexp(0) - math.log(num_chains), log_weights=log_w,
                     acceptance=torch.cat([p[1] for p in parts]), step_size=torch.cat([p[2] for p in parts], dim=1),
                     num_chains=num_chains, num_steps=len(betas) - 1)


@dataclass
class BDMCResult:
    """Bidirectional Monte Carlo on items simulated from the model: per item, forward AIS's
    ``lower`` and reverse AIS's ``upper`` stochastic bounds on log p(x), and the items (``data``)."""

    lower: torch.Tensor
    upper: torch.Tensor
    data: torch.Tensor

    @property
    def gap(self) -> float:
        """The mean of upper - lower: for data like the model's own, a stochastic upper bound on
        the error of AIS at these settings."""
        return (self.upper - self.lower).mean().item()


def _simulate(model: Callable, data: torch.Tensor, args: tuple, kwargs: dict, max_plate_nesting: int):
    """Items (x, z) drawn from the model itself: its observed site becomes x, its latent sites z."""
    conditioned = poutine.trace(model).get_trace(data, *args, **kwargs)
    observed = [name for name, site in sample_sites(conditioned) if site["is_observed"]]
    if len(observed) != 1:
        raise ValueError(f"BDMC simulates the data from the model's one observed site; it has {len(observed)} "
                         f"({', '.join(observed) or 'none'})")
    trace = poutine.trace(poutine.uncondition(model)).get_trace(data, *args, **kwargs)
    x = trace.nodes[observed[0]]["value"].detach()
    latents = {name: site["value"].detach() for name, site in sample_sites(trace) if name != observed[0]}
    return x, latents


def bdmc(model: Callable, guide: Callable, data: torch.Tensor, *args, num_items: int = 100, num_chains: int = 16,
         num_steps: int = 100, leapfrog_steps: int = 10, init: str = "guide",
         schedule: str | Sequence[float] = "sigmoid", target_accept: float = 0.65, step_size: float = 0.1,
         seed: int = 0, max_plate_nesting: int = 1, batch_size: int = 100, **kwargs) -> BDMCResult:
    """Grosse et al.'s bidirectional Monte Carlo (2015; Wu et al. 2017 for decoder-based models).

    ``num_items`` items are simulated from the model (``data`` gives only their shape and the
    arguments): z from the prior, x from p(x|z). Forward AIS from f_0 gives a stochastic lower
    bound on each log p(x); reverse AIS, started at the simulated z (an exact posterior draw
    for that x) and run from β = 1 to 0, a stochastic upper bound (its weights estimate
    1 / p(x)). Their mean gap bounds the error of AIS at these settings on data like the
    model's own. The AIS settings are :func:`ais_log_likelihood`'s.
    """
    if num_items < 1 or num_items > len(data):
        raise ValueError(f"num_items must be between 1 and the {len(data)} items of data, got {num_items}")
    betas = ais_schedule(schedule, num_steps)
    with forked_rng(data.device), torch.no_grad():
        torch.manual_seed(seed)
        simulated, latents = _simulate(model, data[:num_items], args, kwargs, max_plate_nesting)
    lower = ais_log_likelihood(model, guide, simulated, *args, num_chains=num_chains, num_steps=num_steps,
                               leapfrog_steps=leapfrog_steps, init=init, schedule=schedule,
                               target_accept=target_accept, step_size=step_size, seed=seed,
                               max_plate_nesting=max_plate_nesting, batch_size=batch_size, **kwargs)
    uppers = []
    with forked_rng(data.device):
        for index, begin in enumerate(range(0, num_items, batch_size)):
            x = simulated[begin:begin + batch_size]
            # every chain starts at the item's simulated z (the data plate is each latent's first dim)
            start = {k: v[begin:begin + batch_size].unsqueeze(0).expand(num_chains, -1, *v.shape[1:]).clone()
                     for k, v in latents.items()}
            log_w, _, _ = ais_with_pilot(model, guide, x, args, kwargs, seed + 1, index, num_chains,
                                         betas=betas.flip(0), leapfrog_steps=leapfrog_steps, init=init,
                                         target_accept=target_accept, step_size=step_size,
                                         max_plate_nesting=max_plate_nesting, start=start)
            uppers.append(-(log_w.logsumexp(0) - math.log(num_chains)))
    return BDMCResult(lower=lower.log_px, upper=torch.cat(uppers), data=simulated)
