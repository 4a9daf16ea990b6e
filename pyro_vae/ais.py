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
takes ``leapfrog_steps`` steps, each with one evaluation of both densities and their gradient
in z; the accept test and the next weight increment reuse the values at the last position.

Step sizes, one per item and intermediate density, come from pilot chains that run beside the
counted ones (an eighth as many, at least 2) and move the size after each transition toward
``target_accept`` from their own acceptance. The counted chains' kernels then depend only on
the pilots' history, which is independent of theirs, so each counted weight stays unbiased;
tuning on the counted chains' own history biased them (measured: BDMC's reverse bound fell
0.03-0.07 nats below the exact log p(x) of a linear-Gaussian model).

With ``compile=True`` a whole transition (its leapfrog steps, gradients and accept test) is
traced once per batch shape and compiled as the training step is (compiled.py): Pyro's Python
runs at tracing, and every transition after runs only the compiled graph.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Callable, Sequence

import pyro
import torch
from pyro import poutine
from torch.distributions import constraints
from tqdm.auto import tqdm

from .distributed import World, gather_objects
from .marginal import batch_seed, mean_and_stderr, per_item_sum
from .program_check import Requirements, program_key, check_program, particles_plate, sample_sites
from .seeds import forked_rng

ADAPT_RATE = 0.1  # log step size moves by this times (acceptance - target) after each transition


def ais_schedule(schedule: str | Sequence[float], num_steps: int) -> torch.Tensor:
    """The β_0 = 0 < ... < β_T = 1 of a schedule: "linear", "sigmoid" (Grosse et al.'s, with
    δ = 4: rescaled sigmoid(δ (2t/T - 1))), or an explicit increasing sequence from 0 to 1."""
    if isinstance(schedule, str):
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
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


@dataclass(frozen=True)
class AISSettings:
    """How AIS runs (see the module's docstring): ``num_chains`` counted chains per item,
    ``num_steps`` transitions on the ``schedule``, ``leapfrog_steps`` per HMC transition, from
    f_0 = the guide or the prior (``init``), step sizes starting at ``step_size`` and adapted by
    the pilot chains toward ``target_accept``; ``batch_size`` items at a time; ``compile`` the
    transition."""

    num_chains: int = 16
    num_steps: int = 100
    leapfrog_steps: int = 10
    init: str = "guide"
    schedule: str | tuple = "sigmoid"
    target_accept: float = 0.65
    step_size: float = 0.1
    max_plate_nesting: int = 1
    batch_size: int = 100
    compile: bool = False

    def __post_init__(self):
        if not isinstance(self.schedule, str):  # explicit betas: they set the number of steps
            object.__setattr__(self, "schedule", tuple(float(b) for b in self.schedule))
            object.__setattr__(self, "num_steps", len(self.schedule) - 1)
        if self.init not in ("guide", "prior"):
            raise ValueError(f"init must be 'guide' or 'prior', got {self.init!r}")
        for name in ("num_chains", "leapfrog_steps", "batch_size", "max_plate_nesting"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 < self.target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {self.target_accept}")
        if not 0 < self.step_size < math.inf:
            raise ValueError(f"step_size must be a positive number, got {self.step_size}")
        self.betas()  # checks the schedule and num_steps

    def betas(self) -> torch.Tensor:
        return ais_schedule(self.schedule, self.num_steps)

    @property
    def pilot_chains(self) -> int:
        return max(2, self.num_chains // 8)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class AISResult:
    """Per-item AIS estimates, as :func:`ais_log_likelihood` returns them.

    :ivar torch.Tensor log_px: log p^(x) per item (float64): the log-mean-exp over chains of
        the AIS log-weights, a stochastic lower bound on log p(x).
    :ivar torch.Tensor log_weights: each chain's AIS log-weight, shape (chains, items).
    :ivar torch.Tensor acceptance: each item's mean HMC acceptance rate.
    :ivar torch.Tensor step_size: each item's HMC step size at each transition, shape
        (transitions, items), set by the pilot chains.
    :ivar int num_chains: chains per item.
    :ivar int num_steps: T, the number of intermediate densities after f_0.
    """

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


def log_mean_exp_over_chains(log_weights: torch.Tensor) -> torch.Tensor:
    return log_weights.logsumexp(0) - math.log(log_weights.shape[0])


class _Sampler:
    """AIS's densities and HMC transition for one batch of items, as functions of tensors only
    (latent values as a list, in ``names`` order), so that a transition can be traced whole.

    A state at a position is (f_0's energy, the increment log f_1 - log f_0 = d log f_β / dβ,
    their gradients in z): f_β's energy is base - β increment, its gradient likewise."""

    def __init__(self, model: Callable, guide: Callable, args: tuple, kwargs: dict, names: list[str],
                 rows: int, settings: AISSettings):
        self.model, self.guide, self.args, self.kwargs = model, guide, args, kwargs
        self.names, self.rows, self.settings = names, rows, settings

    def state(self, values: list[torch.Tensor], x: torch.Tensor):
        """(base energy, increment, base energy's gradients, increment's gradients) per
        (chain, item) at ``values``: one run of model and guide, one backward pass each."""
        s = self.settings
        values = [v.detach().requires_grad_() for v in values]
        data = dict(zip(self.names, values))
        args = (x, *self.args)
        with particles_plate(self.rows, s.max_plate_nesting):
            model_trace = poutine.trace(poutine.condition(self.model, data=data)).get_trace(*args, **self.kwargs)
            log_prior = per_item_sum(model_trace, "model", self.rows, len(x), s.max_plate_nesting, only=data)
            log_lik = per_item_sum(model_trace, "model", self.rows, len(x), s.max_plate_nesting, exclude=data)
            if s.init == "guide":
                guide_trace = poutine.trace(poutine.condition(self.guide, data=data)).get_trace(*args, **self.kwargs)
                log_q = per_item_sum(guide_trace, "guide", self.rows, len(x), s.max_plate_nesting)
                base, increment = log_q, log_prior + log_lik - log_q
            else:
                base, increment = log_prior, log_lik
        # f_0 does not involve the decoder: its backward is cheap, and the increment's is the
        # one pass through the decoder a leapfrog step needs
        base_grads = _grads(base, values, retain_graph=True)
        increment_grads = _grads(increment, values)
        return -base.detach(), increment.detach(), [-g for g in base_grads], increment_grads

    def transition(self, values: list, base_energy, increment, base_grads: list, increment_grads: list,
                   eps: torch.Tensor, beta: torch.Tensor, x: torch.Tensor):
        """One HMC transition leaving f_β invariant, per (chain, item), with step size ``eps``
        (per item): the new values and state, and each chain's acceptance probability."""
        momenta = [torch.randn_like(v) for v in values]
        start_h = base_energy - beta * increment + _kinetic(momenta)
        position, new = values, (base_energy, increment, base_grads, increment_grads)
        grads = _energy_grads(new, beta)
        momenta = [r - 0.5 * _per_item(eps, r) * g for r, g in zip(momenta, grads)]
        for step in range(self.settings.leapfrog_steps):
            position = [v + _per_item(eps, v) * r for v, r in zip(position, momenta)]
            new = self.state(position, x)
            grads = _energy_grads(new, beta)
            factor = 0.5 if step == self.settings.leapfrog_steps - 1 else 1.0
            momenta = [r - factor * _per_item(eps, r) * g for r, g in zip(momenta, grads)]
        end_h = new[0] - beta * new[1] + _kinetic(momenta)
        accept_prob = torch.exp(start_h - end_h).clamp(max=1.0).nan_to_num(0.0)
        accept = torch.rand_like(accept_prob) < accept_prob

        def keep(proposed, current):
            return torch.where(_per_chain_item(accept, proposed), proposed, current)
        old = (base_energy, increment, base_grads, increment_grads)
        values = [keep(p, v) for p, v in zip(position, values)]
        state = (keep(new[0], old[0]), keep(new[1], old[1]),
                 [keep(p, v) for p, v in zip(new[2], old[2])], [keep(p, v) for p, v in zip(new[3], old[3])])
        return values, *state, accept_prob


def _grads(output: torch.Tensor, inputs: list, retain_graph: bool = False) -> list[torch.Tensor]:
    grads = torch.autograd.grad(output.sum(), inputs, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(v) if g is None else g for v, g in zip(inputs, grads)]


def _energy_grads(state, beta) -> list[torch.Tensor]:
    return [g - beta * h for g, h in zip(state[2], state[3])]


def _per_item(eps: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A per-item step size shaped to broadcast against a (chains, items, ...) value."""
    return eps.reshape((1, -1) + (1,) * (value.dim() - 2)).to(value.dtype)


def _per_chain_item(mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape + (1,) * (value.dim() - 2))


def _kinetic(momenta: list[torch.Tensor]) -> torch.Tensor:
    return sum(0.5 * (r ** 2).reshape(r.shape[0], r.shape[1], -1).sum(-1) for r in momenta)


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


class _Transitions:
    """A sampler's transition, run eagerly or, with ``compile``, by a graph traced and compiled
    for the first batch shape of a run (a batch of another shape, a short last one, runs
    eagerly rather than paying a second compilation)."""

    def __init__(self, compile: bool):
        self.compile, self.shape = compile, None

    def __call__(self, sampler: _Sampler, *inputs):
        x = inputs[-1]
        self.shape = self.shape if self.shape is not None else x.shape
        if not self.compile or x.shape != self.shape:
            return sampler.transition(*inputs)
        values, *rest = _compiled_transition(sampler, inputs)(*inputs)
        return list(values), *rest


_COMPILED: OrderedDict = OrderedDict()  # the last few compiled transitions, for repeated calls
COMPILED_KEPT = 4


def _compiled_transition(sampler: _Sampler, inputs: tuple) -> Callable:
    """The compiled transition of this model, guide, settings and input shapes, traced at its
    first use. The graph reads the programs' parameters in place (an optimizer's or
    load_state_dict's updates are seen) and holds ``args`` and ``kwargs`` as they were: a call
    with other argument objects compiles afresh."""
    x = inputs[-1]
    key = (program_key(sampler.model), program_key(sampler.guide), sampler.settings, tuple(sampler.names),
           tuple(v.shape for v in inputs[0]), x.shape, x.dtype, str(x.device),
           tuple(id(a) for a in sampler.args), tuple((k, id(v)) for k, v in sorted(sampler.kwargs.items())))
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
        return _COMPILED[key][-1]
    from torch.fx.experimental.proxy_tensor import make_fx

    from .compiled import compile_graph

    def transition(values, base_energy, increment, base_grads, increment_grads, eps, beta, x):
        return sampler.transition(values, base_energy, increment, base_grads, increment_grads, eps, beta, x)
    with forked_rng(x.device), pyro.validation_enabled(False):
        graph = make_fx(transition)(*inputs)
    # the owners and arguments are kept with the graph, so that the ids in its key are not reused
    _COMPILED[key] = (sampler.model, sampler.guide, sampler.args, sampler.kwargs, compile_graph(graph, x.device))
    while len(_COMPILED) > COMPILED_KEPT:
        _COMPILED.popitem(last=False)
    return _COMPILED[key][-1]


def ais_batch(model: Callable, guide: Callable, x: torch.Tensor, args: tuple, kwargs: dict,
              settings: AISSettings, betas: torch.Tensor, start: dict[str, torch.Tensor] | None = None,
              step_sizes: torch.Tensor | None = None, transitions: _Transitions | None = None,
              validate: bool = True, on_transition: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
    """AIS on one batch ``x`` of items, drawing from torch's current random stream: the counted
    chains' ``log_weights`` (chains, items) float64, each item's mean ``acceptance`` over them,
    and the ``step_size`` of each transition (T - 1, items).

    T densities after f_0 take T - 1 transitions (Neal 2001): the last weight increment needs
    none after it, and at T = 1 from the guide this is importance sampling. ``start`` (latent
    values, (chains, items, ...)) replaces the draws of f_0: with ``betas`` from 1 to 0 and
    ``start`` drawn from the posterior this is reverse AIS, whose weights estimate 1 / p(x).
    ``step_sizes`` given, they are used and no pilot chains run. ``validate`` False skips
    Pyro's checks (they scan every value for NaN: on the first batch only)."""
    s = settings
    chains = s.num_chains
    pilots = 0 if step_sizes is not None else s.pilot_chains
    full_args = (x, *args)
    if start is None:  # the counted chains draw first: at one step they are importance sampling's draws
        start = _initial_values(model, guide, full_args, kwargs, chains, s.max_plate_nesting, s.init)
        pilot = _initial_values(model, guide, full_args, kwargs, pilots, s.max_plate_nesting, s.init) \
            if pilots else {k: v[:0] for k, v in start.items()}
    else:
        pilot = {k: v[:1].expand(pilots, *v.shape[1:]) for k, v in start.items()}
    names = list(start)
    values = [torch.cat([start[k], pilot[k]]) for k in names]
    sampler = _Sampler(model, guide, args, kwargs, names, chains + pilots, s)
    transitions = transitions or _Transitions(s.compile)
    log_w = torch.zeros(chains, len(x), dtype=torch.float64, device=x.device)
    eps = torch.full((len(x),), s.step_size, dtype=values[0].dtype, device=x.device)
    used, accepted = [], torch.zeros(len(x), dtype=torch.float64, device=x.device)
    with contextlib.nullcontext() if validate else pyro.validation_enabled(False):
        state = sampler.state(values, x)
    increments = (betas[1:] - betas[:-1]).tolist()
    betas_here = betas.to(device=x.device, dtype=values[0].dtype)
    with pyro.validation_enabled(False):
        for t, increment in enumerate(increments, start=1):
            log_w += increment * state[1][:chains].double()  # log f_t - log f_{t-1} at the current z
            if t == len(increments):
                break
            if step_sizes is not None:
                eps = step_sizes[t - 1].to(eps)
            used.append(eps)
            values, *state, accept_prob = transitions(sampler, values, *state, eps, betas_here[t], x)
            accepted += accept_prob[:chains].double().mean(0)
            if pilots:  # the next size from the pilots' acceptance alone: the counted chains'
                # kernels stay independent of their own paths
                eps = eps * torch.exp(ADAPT_RATE * (accept_prob[chains:].mean(0) - s.target_accept))
            if on_transition is not None:
                on_transition()
    no_transition = torch.full_like(accepted, math.nan)
    return {"log_weights": log_w, "acceptance": accepted / len(used) if used else no_transition,
            "step_size": torch.stack(used).double() if used else eps.new_zeros(0, len(x), dtype=torch.float64)}


def ais_per_item(model: Callable, guide: Callable, data: torch.Tensor, settings: AISSettings, *,
                 args: tuple = (), kwargs: dict | None = None, seed: int = 0, start: dict | None = None,
                 step_sizes: torch.Tensor | None = None, world: World | None = None, progress: bool = False,
                 finished: dict | None = None, on_batch: Callable[[int, dict], None] | None = None,
                 label: str = "AIS") -> dict[str, torch.Tensor]:
    """The engine of :func:`ais_log_likelihood` and :func:`bdmc`: per-item ``log_weights``
    (chains, items), ``acceptance`` and ``step_size`` (steps, items) for all of ``data``.

    Items go in batches of ``settings.batch_size``, batch i seeded by ``batch_seed(seed, i)``
    inside a forked RNG. ``start`` (per-item latents, (items, ...)) runs reverse AIS from them;
    ``step_sizes`` (T - 1, items) fixes the step sizes (no pilot chains).
    With a ``world`` of several ranks, batch i goes to rank i mod size and every rank returns
    the gathered result. ``finished`` maps batch indices to results already computed (they are
    not run again); ``on_batch(index, result)`` is called as each batch finishes, so that a
    caller can keep them and resume an interrupted evaluation."""
    world, kwargs, finished = world or World(), kwargs or {}, dict(finished or {})
    s = settings
    check_program(model, guide, (data[:s.batch_size], *args), kwargs, s.max_plate_nesting,
                  Requirements(vectorized=True, per_item=True, pathwise=False), "AIS")
    betas = s.betas().flip(0) if start is not None else s.betas()
    batches = list(enumerate(range(0, len(data), s.batch_size)))
    mine = [(i, b) for i, b in batches if i % world.size == world.rank and i not in finished]
    bar = tqdm(total=len(mine) * (len(betas) - 2), unit="transition", desc=label, dynamic_ncols=True,
               disable=None if progress else True)
    transitions = _Transitions(s.compile)
    parts = {i: r for i, r in finished.items() if i % world.size == world.rank}
    with forked_rng(data.device):
        for position, (index, begin) in enumerate(mine):
            torch.manual_seed(batch_seed(seed, index))
            x = data[begin:begin + s.batch_size]
            batch_start = None if start is None else {  # every chain starts at the item's latents
                k: v[begin:begin + len(x)].expand(s.num_chains, *v[begin:begin + len(x)].shape)
                for k, v in start.items()}
            batch_step_sizes = None if step_sizes is None else step_sizes[:, begin:begin + len(x)]
            parts[index] = ais_batch(model, guide, x, args, kwargs, s, betas, batch_start, batch_step_sizes,
                                     transitions, validate=position == 0, on_transition=lambda: bar.update(1))
            if on_batch is not None:
                on_batch(index, parts[index])
    bar.close()
    if world.active:
        shipped = {i: {k: v.cpu() for k, v in r.items()} for i, r in parts.items()}
        parts = {i: r for rank_parts in gather_objects(shipped, world) for i, r in rank_parts.items()}
    ordered = [parts[i] for i, _ in batches]
    return {"log_weights": torch.cat([p["log_weights"].to(data.device) for p in ordered], dim=1),
            "acceptance": torch.cat([p["acceptance"].to(data.device) for p in ordered]),
            "step_size": torch.cat([p["step_size"].to(data.device) for p in ordered], dim=1)}


def ais_log_likelihood(model: Callable, guide: Callable, data: torch.Tensor, *args, num_chains: int = 16,
                       num_steps: int = 100, leapfrog_steps: int = 10, init: str = "guide",
                       schedule: str | Sequence[float] = "sigmoid", target_accept: float = 0.65,
                       step_size: float = 0.1, seed: int = 0, max_plate_nesting: int = 1, batch_size: int = 100,
                       compile: bool = False, **kwargs) -> AISResult:
    """Annealed importance sampling (Neal 2001) of log p(x) for each item of ``data``, with HMC
    transitions between the intermediate densities f_β (see the module's docstring):
    f_β = q(z|x)^(1-β) p(x, z)^β from the guide, or p(z) p(x|z)^β from the prior. Each chain's
    weight is an unbiased estimate of p(x), so log p^(x) is a stochastic lower bound that
    tightens as ``num_steps`` grows.

    ``data`` goes in batches of ``batch_size`` items along dim 0, each passed as the first
    argument of ``model`` and ``guide`` (``*args`` and ``**kwargs`` after it), every sample site
    in the data plate (dim ``-max_plate_nesting``), as for :func:`estimate_log_likelihood`;
    anything else is a ValueError naming the site. A given ``seed`` gives the same numbers; the
    caller's random state is left as it was.

    :param callable model: a Pyro model p(x, z) whose observed site takes the item.
    :param callable guide: a Pyro guide q(z|x) with a reparameterized sample site per latent.
    :param torch.Tensor data: the items, along dim 0.
    :param int num_chains: AIS chains per item (default 16, as Wu et al.).
    :param int num_steps: T, the intermediate densities after f_0 (T - 1 HMC transitions).
    :param int leapfrog_steps: leapfrog steps per HMC transition.
    :param str init: "guide" (start from q(z|x)) or "prior" (from the model's own prior).
    :param schedule: "sigmoid" (Grosse et al. 2015), "linear", or the increasing betas from
        0 to 1 themselves (then ``num_steps`` is their number minus one).
    :param float target_accept: the acceptance rate the pilot chains tune each item's step
        size toward, at each intermediate density.
    :param float step_size: where each item's step size starts.
    :param int seed: the random seed of the draws.
    :param int max_plate_nesting: the number of plates the programs nest.
    :param int batch_size: items per batch (memory grows with items × chains).
    :param bool compile: trace and compile the whole HMC transition once (the model's
        structure must not depend on the values, as for ``fit(..., compile=True)``).
    :returns: an :class:`AISResult`.

    References: R. M. Neal, Annealed importance sampling, Statistics and Computing 2001;
    Y. Wu, Y. Burda, R. Salakhutdinov, R. Grosse, On the Quantitative Analysis of
    Decoder-Based Generative Models, ICLR 2017 (arXiv:1611.04273).

    Example, on a user's own model::

        result = ais_log_likelihood(vae.model, vae.guide, test_images, num_chains=16, num_steps=1000)
        print(result.summary()["log_px_mean"])
    """
    settings = AISSettings(num_chains, num_steps, leapfrog_steps, init, schedule, target_accept, step_size,
                           max_plate_nesting, batch_size, compile)
    if len(data) == 0:
        raise ValueError("data holds no items")
    out = ais_per_item(model, guide, data, settings, args=args, kwargs=kwargs, seed=seed)
    return AISResult(log_px=log_mean_exp_over_chains(out["log_weights"]), log_weights=out["log_weights"],
                     acceptance=out["acceptance"], step_size=out["step_size"], num_chains=num_chains,
                     num_steps=settings.num_steps)


@dataclass
class BDMCResult:
    """Bidirectional Monte Carlo on items simulated from the model, as :func:`bdmc` returns it.

    :ivar torch.Tensor lower: forward AIS's stochastic lower bound on each item's log p(x).
    :ivar torch.Tensor upper: reverse AIS's stochastic upper bound on each item's log p(x).
    :ivar torch.Tensor data: the simulated items.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    data: torch.Tensor

    @property
    def gap(self) -> float:
        """The mean of upper - lower: for data like the model's own, a stochastic upper bound on
        the error of AIS at these settings."""
        return (self.upper - self.lower).mean().item()

    def summary(self) -> dict[str, float]:
        lower, lower_err = mean_and_stderr(self.lower)
        upper, upper_err = mean_and_stderr(self.upper)
        _, gap_err = mean_and_stderr(self.upper - self.lower)
        return {"lower_mean": lower, "lower_stderr": lower_err, "upper_mean": upper, "upper_stderr": upper_err,
                "gap": self.gap, "gap_stderr": gap_err}


def simulate(model: Callable, data: torch.Tensor, args: tuple, kwargs: dict, seed: int
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Items (x, z) drawn from the model itself, as many as ``data`` has (which gives only their
    shape and the arguments): its one observed site becomes x, its latent sites z."""
    with forked_rng(data.device), torch.no_grad():
        torch.manual_seed(seed)
        conditioned = poutine.trace(model).get_trace(data, *args, **kwargs)
        observed = [name for name, site in sample_sites(conditioned) if site["is_observed"]]
        if len(observed) != 1:
            raise ValueError(f"BDMC simulates the data from the model's one observed site; it has "
                             f"{len(observed)} ({', '.join(observed) or 'none'})")
        trace = poutine.trace(poutine.uncondition(model)).get_trace(data, *args, **kwargs)
    x = trace.nodes[observed[0]]["value"].detach()
    latents = {name: site["value"].detach() for name, site in sample_sites(trace) if name != observed[0]}
    return x, latents


REVERSE_SEED_OFFSET = 1  # reverse AIS's batches draw from seed + 1: apart from the forward run's


def bdmc(model: Callable, guide: Callable, data: torch.Tensor, *args, num_items: int = 100, num_chains: int = 16,
         num_steps: int = 100, leapfrog_steps: int = 10, init: str = "guide",
         schedule: str | Sequence[float] = "sigmoid", target_accept: float = 0.65, step_size: float = 0.1,
         seed: int = 0, max_plate_nesting: int = 1, batch_size: int = 100, compile: bool = False,
         **kwargs) -> BDMCResult:
    """Grosse et al.'s bidirectional Monte Carlo (2015; Wu et al. 2017 for decoder-based models).

    ``num_items`` items are simulated from the model (``data`` gives only their shape and the
    arguments): z from the prior, x from p(x|z). Forward AIS from f_0 gives a stochastic lower
    bound on each log p(x); reverse AIS, started at the simulated z (an exact posterior draw
    for that x) and run from β = 1 to 0, a stochastic upper bound (its weights estimate
    1 / p(x)). Their mean gap bounds the error of AIS at these settings on data like the
    model's own.

    :param callable model: a Pyro model with one observed site (the one simulated).
    :param callable guide: a Pyro guide, as for :func:`ais_log_likelihood`.
    :param torch.Tensor data: gives only the items' shape (and the arguments after it).
    :param int num_items: the number of items to simulate.
    :param int seed: the random seed; the simulation, forward and reverse runs draw apart.
    :returns: a :class:`BDMCResult`.

    The other parameters are :func:`ais_log_likelihood`'s.

    References: R. B. Grosse, Z. Ghahramani, R. P. Adams, Sandwiching the marginal likelihood
    using bidirectional Monte Carlo, arXiv:1511.02543 (2015); Wu et al., ICLR 2017.
    """
    settings = AISSettings(num_chains, num_steps, leapfrog_steps, init, schedule, target_accept, step_size,
                           max_plate_nesting, batch_size, compile)
    simulated, forward, reverse = bdmc_per_item(model, guide, data, settings, num_items=num_items, args=args,
                                                kwargs=kwargs, seed=seed)
    return BDMCResult(lower=log_mean_exp_over_chains(forward["log_weights"]),
                      upper=-log_mean_exp_over_chains(reverse["log_weights"]), data=simulated)


def bdmc_per_item(model: Callable, guide: Callable, data: torch.Tensor, settings: AISSettings, *, num_items: int,
                  args: tuple = (), kwargs: dict | None = None, seed: int = 0, world: World | None = None,
                  progress: bool = False, finished: dict | None = None,
                  on_batch: Callable[[str, int, dict], None] | None = None) -> tuple[torch.Tensor, dict, dict]:
    """The engine of :func:`bdmc`: (simulated items, forward AIS's and reverse AIS's
    :func:`ais_per_item` results). ``finished`` holds the batches already done of each
    direction ({"forward": {index: result}, "reverse": ...}); ``on_batch(direction, index,
    result)`` is called as each finishes."""
    if isinstance(num_items, bool) or not isinstance(num_items, int) or not 1 <= num_items <= len(data):
        raise ValueError(f"num_items must be between 1 and the {len(data)} items of data, got {num_items!r}")
    kwargs, finished = kwargs or {}, finished or {}
    simulated, latents = simulate(model, data[:num_items], args, kwargs, seed)

    def run(direction: str, **how):
        keep = None if on_batch is None else (lambda index, result: on_batch(direction, index, result))
        return ais_per_item(model, guide, simulated, settings, args=args, kwargs=kwargs, world=world,
                            progress=progress, finished=finished.get(direction), on_batch=keep,
                            label=f"BDMC {direction}", **how)
    forward = run("forward", seed=seed)
    # the reverse chains run at the forward pilots' step sizes: pilots started at the simulated z
    # would tie the counted chains' kernels to their own starting point
    reverse = run("reverse", seed=seed + REVERSE_SEED_OFFSET, start=latents, step_sizes=forward["step_size"].flip(0))
    return simulated, forward, reverse
