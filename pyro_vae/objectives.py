"""The training objectives behind ``--elbo``: a registry of Pyro ELBO estimators.

``trace``      Trace_ELBO: the Monte-Carlo ELBO, (1/L) sum_l [log p(x, z_l) - log q(z_l|x)],
               z_l ~ q(z|x) reparameterized (Kingma & Welling's SGVB estimator A); its
               differentiable loss computed without reading it back to the host.
``meanfield``  TraceMeanField_ELBO: the same bound with KL(q(z|x) || p(z)) in closed form
               (estimator B of the paper): (1/L) sum_l log p(x|z_l) - KL; also without a read.
``iwae``       the importance-weighted bound of Burda et al. with k = L samples per image:
               log (1/L) sum_l w_l, w_l = p(x, z_l) / q(z_l|x); Renyi's bound at alpha = 0.
``renyi``      Li & Turner's Renyi bound, 1/(1-alpha) log (1/L) sum_l w_l^(1-alpha) (``--alpha``).
``stl``        the ELBO with q at stopped parameters: Roeder et al.'s "sticking the landing".
``dreg``       the IWAE bound with Tucker et al.'s doubly reparameterized guide gradient.
``miwae``      the mean of M IWAE bounds of K = L samples (``--num-estimates M``).
``ciwae``      beta * ELBO + (1 - beta) * IWAE_K on the same samples (``--beta``).
``piwae``      the model trained on IWAE with M*K samples, the guide on MIWAE(M, K).

The last five are in estimators.py, with their math; they always draw particles vectorized.

Each entry maps (particles L, vectorized or not, jit or not, max_plate_nesting, options) to a
Pyro ELBO instance. :func:`register_objective` adds one, and ``--elbo`` lists what is registered.
"""

from __future__ import annotations

from typing import Callable

import math

import torch
from pyro import poutine
from torch.distributions import kl_divergence
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    JitTraceMeanField_ELBO,
    RenyiELBO,
    Trace_ELBO,
    TraceMeanField_ELBO,
)
from pyro.infer.util import get_dependent_plate_dims, is_validation_enabled, torch_sum
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from . import estimators
from .marginal import MAX_PLATE_NESTING


class SyncFreeTrace_ELBO(Trace_ELBO):
    r"""Pyro's :class:`~pyro.infer.Trace_ELBO` whose differentiable loss never leaves the device.

    .. math::
        -\mathcal{L} = -\frac{1}{L} \sum_{l=1}^{L} \left[\log p(x, z_l) - \log q(z_l | x)\right],
        \qquad z_l \sim q(z | x) \text{ reparameterized}

    ``Trace_ELBO.differentiable_loss`` also forms a float copy of the loss: ``.item()`` of every
    site's log-probability sum and of the total, and a NaN check forward and backward. Each is a
    host read, which on a GPU stalls the queue of kernels every step. This is the same tensor (same
    value, same gradients, a test checks both) with no read; the trainer checks the loss for NaN
    when it reads it. Guides with non-reparameterized sites are refused: they need Trace_ELBO's
    score-function surrogate.

    While Pyro's validation is on (the trainer's first step) the traces are Pyro's own, with every
    check. Once it is off, the model and guide are traced as Pyro traces them but the log-densities
    are summed straight from the sites: no trace copies to drop the plates' subsample sites, no
    score parts (zero for reparameterized sites), about 0.1 ms less Python a step on the CPU.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = 0.0
        for model_trace, guide_trace in self._traces(model, guide, args, kwargs):
            elbo_particle = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample" and not site_is_subsample(site):
                    elbo_particle = elbo_particle + _log_prob_sum(site)
            for site in guide_trace.nodes.values():
                if site["type"] == "sample" and not site_is_subsample(site):
                    if not site["fn"].has_rsample:
                        raise NotImplementedError("SyncFreeTrace_ELBO needs reparameterized guide sites")
                    elbo_particle = elbo_particle - _log_prob_sum(site)
            loss = loss - elbo_particle / self.num_particles
        return loss

    def _traces(self, model, guide, args, kwargs):
        """(model trace, guide trace) per particle, or one pair for vectorized particles."""
        if (is_validation_enabled() or self.max_plate_nesting == float("inf")
                or isinstance(poutine.unwrap(guide), Messenger)):
            yield from self._get_traces(model, guide, args, kwargs)
            return
        repeats = self.num_particles
        if self.vectorize_particles:
            model, guide, repeats = self._vectorized_num_particles(model), self._vectorized_num_particles(guide), 1
        for _ in range(repeats):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            yield poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs), guide_trace


class SyncFreeTraceMeanField_ELBO(TraceMeanField_ELBO):
    r"""Pyro's :class:`~pyro.infer.TraceMeanField_ELBO` whose differentiable loss never leaves the
    device, as :class:`SyncFreeTrace_ELBO` for ``trace``:

    .. math::
        -\mathcal{L} = -\frac{1}{L} \sum_{l=1}^{L} \log p(x | z_l) + \mathrm{KL}(q(z|x) \,\|\, p(z))

    with the KL in closed form where torch has it, and log p(z_l) - log q(z_l|x) where it has not.
    Pyro's version reads the loss back (``.item()``, a NaN check) every particle; this one has the
    same value and gradients (a test checks both) and no read, so a traced step holds no host read.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            elbo_particle = 0.0
            for name, site in model_trace.nodes.items():
                if site["type"] != "sample" or site_is_subsample(site):
                    continue
                if site["is_observed"]:
                    elbo_particle = elbo_particle + _log_prob_sum(site)
                    continue
                guide_site = guide_trace.nodes[name]
                try:
                    kl = kl_divergence(guide_site["fn"], site["fn"])
                    elbo_particle = elbo_particle - scale_and_mask(kl, guide_site["scale"], guide_site["mask"]).sum()
                except NotImplementedError:
                    elbo_particle = elbo_particle + _log_prob_sum(site) - _log_prob_sum(guide_site)
            for name, site in guide_trace.nodes.items():  # auxiliary guide sites
                if site["type"] == "sample" and not site_is_subsample(site) and name not in model_trace.nodes:
                    elbo_particle = elbo_particle - _log_prob_sum(site)
            loss = loss - elbo_particle / self.num_particles
        return loss


def _log_prob_sum(site) -> torch.Tensor:
    """A sample site's scaled and masked log-density, summed; Pyro's memoized sum if it has one."""
    if "log_prob_sum" in site:
        return site["log_prob_sum"]
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_prob, site["scale"], site["mask"]).sum()


def _pick(plain: type, jitted: type, num_particles: int, vectorize: bool, jit: bool,
          max_plate_nesting: int) -> ELBO:
    kwargs = dict(num_particles=num_particles, vectorize_particles=vectorize,
                  max_plate_nesting=max_plate_nesting)
    return jitted(ignore_jit_warnings=True, **kwargs) if jit else plain(**kwargs)


def _trace(num_particles: int, vectorize: bool, jit: bool, max_plate_nesting: int = MAX_PLATE_NESTING,
           **_) -> ELBO:
    return _pick(SyncFreeTrace_ELBO, JitTrace_ELBO, num_particles, vectorize, jit, max_plate_nesting)


def _meanfield(num_particles: int, vectorize: bool, jit: bool, max_plate_nesting: int = MAX_PLATE_NESTING,
               **_) -> ELBO:
    return _pick(SyncFreeTraceMeanField_ELBO, JitTraceMeanField_ELBO, num_particles, vectorize, jit, max_plate_nesting)


class DifferentiableRenyiELBO(RenyiELBO):
    r"""Pyro's :class:`~pyro.infer.RenyiELBO` with a ``differentiable_loss``.

    Per datapoint i (the log-weights are summed over every plate but the outermost common one,
    exactly as ``RenyiELBO.loss`` does, so the bound is per image, not pooled over the batch):

    .. math::
        \mathcal{L}_\alpha = \sum_i \frac{1}{1-\alpha}
            \log \frac{1}{L} \sum_{l=1}^{L} w_{il}^{1-\alpha},
        \qquad w_{il} = \frac{p(x_i, z_{il})}{q(z_{il} | x_i)}

    The loss is :math:`-\mathcal{L}_\alpha`. For reparameterized guides its gradient is the one
    ``RenyiELBO.loss_and_grads`` forms (self-normalised weights times the gradient of log w), but
    as a tensor: no ``.item()`` per step, and any torch optimizer can drive it. Guides with
    non-reparameterizable sites are refused (they need the score-function surrogate).
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        elbo_particles = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            elbo_particle = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    elbo_particle = elbo_particle + torch_sum(site["log_prob"], sum_dims)
            for site in guide_trace.nodes.values():
                if site["type"] == "sample":
                    if not is_identically_zero(site["score_parts"].score_function):
                        raise NotImplementedError("DifferentiableRenyiELBO needs reparameterized guide sites")
                    elbo_particle = elbo_particle - torch_sum(site["log_prob"], sum_dims)
            elbo_particles.append(elbo_particle)
        if self.vectorize_particles and self.num_particles > 1:
            elbo_particles = elbo_particles[0]
        else:
            elbo_particles = torch.stack(elbo_particles)
        log_weights = (1.0 - self.alpha) * elbo_particles
        log_mean_weight = torch.logsumexp(log_weights, dim=0) - math.log(self.num_particles)
        return -log_mean_weight.sum() / (1.0 - self.alpha)


def _renyi(num_particles: int, vectorize: bool, jit: bool, max_plate_nesting: int = MAX_PLATE_NESTING,
           alpha: float = 0.5, **_) -> ELBO:
    if jit:
        raise ValueError("jit is not available for the iwae/renyi estimators (Pyro has no JitRenyiELBO)")
    if alpha == 1:
        raise ValueError("alpha = 1 is the ordinary ELBO: use the trace estimator")
    return DifferentiableRenyiELBO(alpha=alpha, num_particles=num_particles,
                                   vectorize_particles=vectorize, max_plate_nesting=max_plate_nesting)


def _iwae(num_particles: int, vectorize: bool, jit: bool, max_plate_nesting: int = MAX_PLATE_NESTING,
          **_) -> ELBO:
    return _renyi(num_particles, vectorize, jit, max_plate_nesting, alpha=0.0)


def _no_jit(name: str, jit: bool) -> None:
    if jit:
        raise ValueError(f"jit is not available for the {name} estimator")


def _stl(num_particles: int, vectorize: bool, jit: bool, max_plate_nesting: int = MAX_PLATE_NESTING, **_) -> ELBO:
    _no_jit("stl", jit)
    return estimators.STL_ELBO(num_particles, max_plate_nesting=max_plate_nesting)


def _dreg(num_particles: int, vectorize: bool, jit: bool, max_plate_nesting: int = MAX_PLATE_NESTING, **_) -> ELBO:
    _no_jit("dreg", jit)
    return estimators.DReG_IWAE(num_particles, max_plate_nesting=max_plate_nesting)


def _miwae(num_particles: int, vectorize: bool, jit: bool, max_plate_nesting: int = MAX_PLATE_NESTING,
           num_estimates: int = 1, **_) -> ELBO:
    _no_jit("miwae", jit)
    return estimators.MIWAE(num_particles, num_estimates, max_plate_nesting=max_plate_nesting)


def _piwae(num_particles: int, vectorize: bool, jit: bool, max_plate_nesting: int = MAX_PLATE_NESTING,
           num_estimates: int = 1, **_) -> ELBO:
    _no_jit("piwae", jit)
    return estimators.PIWAE(num_particles, num_estimates, max_plate_nesting=max_plate_nesting)


def _ciwae(num_particles: int, vectorize: bool, jit: bool, max_plate_nesting: int = MAX_PLATE_NESTING,
           beta: float = 0.5, **_) -> ELBO:
    _no_jit("ciwae", jit)
    return estimators.CIWAE(num_particles, beta, max_plate_nesting=max_plate_nesting)


OBJECTIVES: dict[str, Callable[..., ELBO]] = {
    "trace": _trace,
    "meanfield": _meanfield,
    "iwae": _iwae,
    "renyi": _renyi,
    "stl": _stl,
    "dreg": _dreg,
    "miwae": _miwae,
    "ciwae": _ciwae,
    "piwae": _piwae,
}


def objective_label(name: str, num_particles: int, num_estimates: int = 1) -> str:
    """'trace L=1', 'iwae K=5', 'miwae M=2 K=4': an estimator and its sample counts as the
    literature writes them (L samples of the ELBO, K of an importance-weighted bound)."""
    if name in ("miwae", "piwae"):
        return f"{name} M={num_estimates} K={num_particles}"
    return f"{name} {'L' if name in ('trace', 'meanfield', 'stl') else 'K'}={num_particles}"


def make_elbo(name: str, num_particles: int = 1, vectorize: bool = False, jit: bool = False,
              max_plate_nesting: int = MAX_PLATE_NESTING, **options) -> ELBO:
    """The Pyro ELBO registered as ``name`` with L = ``num_particles`` samples per item, drawn in
    one vectorized pass if ``vectorize`` (particles at dim -(max_plate_nesting + 1)); ``options``
    go to the estimator (e.g. ``alpha`` for renyi). Use it as any Pyro ELBO:
    ``elbo.differentiable_loss(model, guide, x)`` or ``pyro.infer.SVI(model, guide, optim, elbo)``."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; registered: {', '.join(OBJECTIVES)}")
    if num_particles < 1:
        raise ValueError(f"num_particles must be a positive integer, got {num_particles}")
    return OBJECTIVES[name](num_particles=num_particles, vectorize=vectorize, jit=jit,
                            max_plate_nesting=max_plate_nesting, **options)


def register_objective(name: str, factory: Callable[..., ELBO]) -> None:
    """Make ``factory`` available as ``make_elbo(name, ...)`` (and to the commands' ``--elbo``).
    It is called with ``num_particles``, ``vectorize``, ``jit``, ``max_plate_nesting`` and the
    options given to make_elbo as keywords, and returns a Pyro ELBO."""
    if not callable(factory):
        raise TypeError(f"the factory of objective {name!r} must be callable, got {type(factory).__name__}")
    if name in OBJECTIVES:
        raise ValueError(f"objective {name!r} is already registered")
    OBJECTIVES[name] = factory
