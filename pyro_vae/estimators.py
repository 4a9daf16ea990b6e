"""Per-item ELBO estimators as Pyro ELBOs: IWAE and Renyi, STL, DReG, MIWAE, CIWAE, PIWAE.

Each works on any Pyro model and guide whose sample sites lie in the data plate (the outermost
plate, at dim -max_plate_nesting); program_check.py refuses, by site name, any other program.
The K particles of an item are drawn in one vectorized pass, under a "particles" plate one dim
to the left of the data plate (iwae and renyi may draw them one at a time instead), and each
estimator combines the per-item log-weights

    log w_ik = log p(x_i, z_ik) - log q(z_ik | x_i),    z_ik ~ q(z | x_i) reparameterized.

**Subsampled data.** In ``pyro.plate("data", N, subsample_size=B)`` Pyro scales every site by
N/B. A per-item bound is a sum over items, so the scale multiplies each item's bound *outside*
its log-mean-exp: the objective is (N/B) sum_{i in batch} bound_i, an unbiased estimate of the
full data set's sum of per-item bounds (Pyro's RenyiELBO puts the scale inside, pyro-ppl/pyro
issue #3104). Any other scale (an inner subsampled plate, ``poutine.scale``) stays inside log w.

**Gradient tools**, all from one guide pass and one model pass (no program is run twice):

* **q at stopped parameters.** log q(z; stop(phi)) keeps the path through z and drops the
  direct dependence on phi: each guide site's distribution with its parameters detached,
  evaluated at the drawn z. Same value as log q.
* **Path weights.** DReG and PIWAE weight the gradient that reaches the decoder's parameters
  (theta) and the one that reaches z (and through it phi) differently. The model runs on z
  passed through an identity whose backward multiplies the gradient, per particle and item, by
  a weight set once the log-weights are known; theta's weighting is the loss's own.

The value of every loss is the negated bound, summed over the items of the batch, as Pyro's
ELBOs; only the gradients differ. The estimators assume that the model's parameters (theta)
and the guide's (phi) are separate, as in a VAE.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from torch.distributions import Distribution

from .marginal import per_item_log_density
from .program_check import ProgramChecks, ProgramShape, Requirements, particles_plate, sample_sites


def _stop(value: torch.Tensor) -> torch.Tensor:
    """A value's stopped copy: the same number, no gradient (the 'surrogate minus its stopped
    copy' terms below change gradients and leave values alone)."""
    return value.detach()


class PathWeights:
    """Multiplies the gradient reaching the guide's draws, per (particle, item), by a weight
    that is set after the forward pass (``set``), before backward."""

    def __init__(self, max_plate_nesting: int):
        self.max_plate_nesting = max_plate_nesting
        self.weight: torch.Tensor | None = None

    def set(self, weight: torch.Tensor) -> None:
        self.weight = _stop(weight)

    def attach(self, value: torch.Tensor, event_dim: int) -> torch.Tensor:
        return _WeightedPath.apply(value, self, event_dim)


class _WeightedPath(torch.autograd.Function):
    """Identity forward; backward multiplies by the (K, batch) weight broadcast over the inner
    plates and the event dims."""

    @staticmethod
    def forward(ctx, value, path: PathWeights, event_dim: int):
        ctx.path, ctx.event_dim = path, event_dim
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad):
        weight = ctx.path.weight
        if weight is None:
            raise RuntimeError("the path weights were not set before backward")
        trailing = ctx.path.max_plate_nesting - 1 + ctx.event_dim
        return grad * weight.reshape(weight.shape + (1,) * trailing).to(grad.dtype), None, None


def _detached(fn: Distribution) -> Distribution | None:
    """A shallow copy of a distribution with every tensor it holds detached (the parameters and
    any cached derived ones), or None for one whose parameters live elsewhere (a module)."""
    if isinstance(fn, torch.nn.Module):
        return None
    out = copy.copy(fn)
    for key, value in vars(fn).items():
        if isinstance(value, torch.Tensor):
            setattr(out, key, value.detach())
        elif isinstance(value, Distribution):
            inner = _detached(value)
            if inner is None:
                return None
            setattr(out, key, inner)
        elif isinstance(value, (list, tuple)) and any(not isinstance(v, (int, float, str)) for v in value):
            return None  # transforms, mixtures: not taken apart here
        elif isinstance(value, torch.nn.Module):
            return None
    return out


def _plate_size(trace: poutine.Trace, dim: int) -> tuple[int, int]:
    """(size, full size) of the plate at ``dim`` in a trace: (B, N) for a subsampled data plate."""
    for _, site in sample_sites(trace):
        for frame in site["cond_indep_stack"]:
            if frame.vectorized and frame.dim == dim:
                return frame.size, frame.full_size or frame.size
    raise ValueError(f"the program has no site in a data plate at dim {dim} on this call: its structure "
                     "changed since it was checked")


class PerItemWeights:
    """The per-item log-densities of one draw of K particles: (K, batch) tensors ``log_p`` and
    ``log_q`` (at full weight within the item), and ``scale``, the data plate's N/B.

    ``sequential`` draws the particles one by one (as Pyro's ``vectorize_particles=False``);
    ``path_weights`` runs the model on the draws through a :class:`PathWeights`."""

    def __init__(self, model: Callable, guide: Callable, args: tuple, kwargs: dict, num_particles: int,
                 max_plate_nesting: int, sequential: bool = False,
                 path_weights: PathWeights | None = None):
        self.num_particles, self.max_plate_nesting = num_particles, max_plate_nesting
        # (guide trace, the values the model saw) per pass: one pass, or one per particle
        self.passes: list[tuple[poutine.Trace, dict]] = []
        log_p, log_q = [], []
        for _ in range(num_particles if sequential else 1):
            with contextlib.nullcontext() if sequential else particles_plate(num_particles, max_plate_nesting):
                guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
                replayed, seen = guide_trace, {}
                if path_weights is not None:
                    replayed = guide_trace.copy()
                    for name, site in sample_sites(guide_trace):
                        seen[name] = path_weights.attach(site["value"], site["fn"].event_dim)
                        replayed.nodes[name] = {**site, "value": seen[name]}
                model_trace = poutine.trace(poutine.replay(model, trace=replayed)).get_trace(*args, **kwargs)
            if not self.passes:
                self.batch, full_size = _plate_size(model_trace, -max_plate_nesting)
                self.scale = full_size / self.batch  # the data plate's subsampling: outside each item's bound
            self.passes.append((guide_trace, seen))
            log_p.append(self._sum(model_trace, "model"))
            log_q.append(self._sum(guide_trace, "guide"))
        self.log_p, self.log_q = torch.cat(log_p), torch.cat(log_q)

    def _sum(self, trace: poutine.Trace, program: str) -> torch.Tensor:
        trace.compute_log_prob()
        return sum(self._per_item(site["log_prob"], site, name, program) for name, site in sample_sites(trace))

    def _per_item(self, log_prob, site: dict, name: str, program: str) -> torch.Tensor:
        if not torch.is_tensor(log_prob):  # a site masked out entirely
            return torch.zeros(())
        if log_prob.dim() == self.max_plate_nesting:  # a particle drawn alone: its particle dim
            log_prob = log_prob.unsqueeze(0)
        particles = log_prob.shape[0] if log_prob.dim() else 1  # a scalar: a site outside every plate, refused
        per_item = per_item_log_density(site, name, program, particles, self.batch, self.max_plate_nesting,
                                        full_weight=False, log_prob=log_prob)
        return per_item / self.scale

    def _guide_sum(self, log_prob_of: Callable) -> torch.Tensor:
        parts = []
        for guide_trace, seen in self.passes:
            total = 0.0
            for name, site in sample_sites(guide_trace):
                log_prob = scale_and_mask(log_prob_of(name, site, seen.get(name, site["value"])),
                                          site["scale"], site["mask"])
                total = total + self._per_item(log_prob, site, name, "guide")
            parts.append(total)
        return torch.cat(parts)

    def log_q_at_path_values(self) -> torch.Tensor:
        """log q(z; phi) at the values the model saw: with path weights, z's gradient weighted."""
        return self._guide_sum(lambda name, site, value: site["fn"].log_prob(value))

    def log_q_stopped_parameters(self) -> torch.Tensor:
        """log q(z; stop(phi)): the value of log q, the gradient through z alone (at the values
        the model saw, so that path weights reach it too)."""
        def stopped(name, site, value):
            fn = _detached(site["fn"])
            if fn is None:
                raise ValueError(f"guide site {name!r}: its distribution {type(site['fn']).__name__} keeps "
                                 "its parameters in a module, which these estimators cannot stop")
            return fn.log_prob(value)
        return self._guide_sum(stopped)

    def log_q_at_stopped_samples(self) -> torch.Tensor:
        """log q(stop(z); phi): the value of log q, the direct phi-gradient alone."""
        return self._guide_sum(lambda name, site, value: site["fn"].log_prob(_stop(site["value"])))


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class PerItemELBO(ELBO):
    """Base of the estimators below: a bound per item, combined over the batch as the module's
    docstring says. ``loss`` and ``loss_and_grads`` come from ``differentiable_loss``, so that
    SVI and a torch optimizer drive them alike. The program is checked once (program_check.py).

    :param int num_particles: K, the particles per item (per estimate, for MIWAE and PIWAE).
    :param int max_plate_nesting: the plates the program nests; the data plate is the outermost,
        at dim -max_plate_nesting, and the particles live one dim to its left.
    """

    name = "per-item"
    vectorize_always = True  # iwae and renyi may also draw particles one at a time

    def __init__(self, num_particles: int = 1, max_plate_nesting: int = 1, vectorize_particles: bool = True):
        _positive_int("num_particles", num_particles)
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.vectorize = vectorize_particles or self.vectorize_always
        self.checks = ProgramChecks(Requirements(vectorized=self.vectorize), self.name, num_particles)

    @property
    def draws(self) -> int:
        return self.num_particles

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("these estimators draw their particles themselves (PerItemWeights)")

    def program_shape(self, model, guide, args, kwargs) -> ProgramShape:
        """The program's check (once per program): see program_check.py."""
        return self.checks(model, guide, args, kwargs, self.max_plate_nesting)

    def weights(self, model, guide, args, kwargs, path_weights: PathWeights | None = None) -> PerItemWeights:
        first = not self.checks.checked(model, guide)
        self.program_shape(model, guide, args, kwargs)
        try:
            return PerItemWeights(model, guide, args, kwargs, self.draws, self.max_plate_nesting,
                                  sequential=not self.vectorize, path_weights=path_weights)
        except (AssertionError, RuntimeError, IndexError) as error:
            if not first or not self.vectorize:
                raise
            # the program ran without particles in the check: it is their plate that it cannot take
            raise ValueError(f"the program fails under {self.draws} vectorized particles at dim "
                             f"-{self.max_plate_nesting + 1} ({type(error).__name__}: {error}): a program that "
                             "asserts its own shapes, or whose batch dims are not all plates within "
                             "max_plate_nesting, cannot be vectorized; the per-item estimators need it") from error

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:  # a program with no parameters has nothing to differentiate
            loss.backward()
        return loss.item()


def _log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return log_w.logsumexp(dim) - math.log(log_w.shape[dim])


def _with_value(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``value``'s number with ``surrogate``'s gradient."""
    return _stop(value) + surrogate - _stop(surrogate)


class RenyiBound(PerItemELBO):
    r"""Li & Turner (2016), the Renyi bound per item, as Pyro's :class:`~pyro.infer.RenyiELBO`:

    .. math::
        \mathcal{L}_\alpha = s \sum_i \frac{1}{1-\alpha}
            \log \frac{1}{K} \sum_{k=1}^{K} w_{ik}^{1-\alpha},
        \qquad w_{ik} = \frac{p(x_i, z_{ik})}{q(z_{ik} | x_i)},

    with s the data plate's N/B. Its gradient is RenyiELBO's (self-normalised weights times the
    gradient of log w) as a tensor, so any torch optimizer can drive it. alpha = 0 is Burda et
    al.'s IWAE bound; alpha = 1 is the ELBO (use trace).

    :param float alpha: Renyi's alpha, a finite number other than 1 (0 is IWAE; 1 would be the
        ELBO).
    :param bool vectorize_particles: draw the K particles in one pass (default) or one by one.
    """

    name = "renyi"
    vectorize_always = False

    def __init__(self, num_particles: int = 1, max_plate_nesting: int = 1, vectorize_particles: bool = True,
                 alpha: float = 0.5):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise ValueError(f"alpha must be a finite number, got {alpha!r}")
        if alpha == 1:
            raise ValueError("alpha = 1 is the ordinary ELBO: use the trace estimator")
        super().__init__(num_particles, max_plate_nesting, vectorize_particles)
        self.alpha = float(alpha)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        w = self.weights(model, guide, args, kwargs)
        log_w = (1.0 - self.alpha) * (w.log_p - w.log_q)
        return -w.scale * _log_mean_exp(log_w).sum() / (1.0 - self.alpha)


class IWAE(RenyiBound):
    r"""Burda et al. (2016), the importance-weighted bound, per item:
    :math:`\mathcal{L}_K = s \sum_i \log \frac{1}{K} \sum_k w_{ik}`; the Renyi bound at alpha = 0."""

    name = "iwae"

    def __init__(self, num_particles: int = 1, max_plate_nesting: int = 1, vectorize_particles: bool = True):
        super().__init__(num_particles, max_plate_nesting, vectorize_particles, alpha=0.0)


class STL_ELBO(PerItemELBO):
    r"""Roeder et al. (2017), "sticking the landing": the ELBO with the guide's density at stopped
    parameters,

    .. math::
        -\mathcal{L} = -s \sum_i \frac{1}{K} \sum_k \left[\log p(x_i, z_{ik})
            - \log q(z_{ik} | x_i; \bar\phi)\right], \qquad \bar\phi = \mathrm{stop}(\phi),

    the same value as Trace_ELBO; its guide gradient drops the score term
    :math:`\nabla_\phi \log q(z;\phi)|_z`, which has mean zero and is the whole gradient noise
    when q is the exact posterior (then every sample's guide gradient is zero).
    """

    name = "stl"

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        w = self.weights(model, guide, args, kwargs)
        return -w.scale * (w.log_p - w.log_q_stopped_parameters()).mean(0).sum()


class DReG_IWAE(PerItemELBO):
    r"""Tucker et al. (2018), doubly reparameterized gradients of the IWAE bound, their eq. 6.

    Value: :math:`-s \sum_i \log \frac{1}{K} \sum_k w_{ik}`. Gradients, with
    :math:`\tilde w_{ik} = w_{ik} / \sum_j w_{ij}`:

    .. math::
        \nabla_\theta = s \sum_k \tilde w_{ik} \nabla_\theta \log w_{ik} \quad \text{(IWAE's own)},
        \qquad
        \nabla_\phi = s \sum_k \tilde w_{ik}^2 \frac{\partial \log w_{ik}}{\partial z_{ik}}
            \frac{\partial z_{ik}}{\partial \phi},

    with log q at stopped parameters in the second. One surrogate carries both: the sum of
    :math:`\tilde w_{ik} \log w_{ik}`, with the path to z weighted once more by
    :math:`\tilde w_{ik}` (:class:`PathWeights`). Unbiased for IWAE's guide gradient, and its
    signal-to-noise ratio grows with K where IWAE's falls as 1/sqrt(K). At K = 1 it is STL.
    """

    name = "dreg"

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        path = PathWeights(self.max_plate_nesting)
        w = self.weights(model, guide, args, kwargs, path_weights=path)
        log_w = w.log_p - w.log_q_stopped_parameters()  # phi only through z
        normalized = torch.softmax(_stop(log_w), dim=0)
        path.set(normalized)  # z's path: normalized twice in all
        surrogate = (normalized * log_w).sum()
        return -w.scale * _with_value(_log_mean_exp(log_w).sum(), surrogate)


class MIWAE(PerItemELBO):
    r"""Rainforth et al. (2018): the mean of M independent IWAE bounds of K samples each,

    .. math::
        \mathcal{L} = s \sum_i \frac{1}{M} \sum_{m=1}^{M} \log \frac{1}{K} \sum_{k=1}^{K} w_{imk},

    from M·K draws. M = 1 is IWAE, K = 1 the ELBO with M particles.

    :param int num_estimates: M, the number of IWAE estimates averaged (M = 1 is IWAE).
    """

    name = "miwae"

    def __init__(self, num_particles: int = 1, max_plate_nesting: int = 1, num_estimates: int = 1):
        super().__init__(num_particles, max_plate_nesting)
        self.num_estimates = _positive_int("num_estimates", num_estimates)
        self.checks.num_particles = self.draws

    @property
    def draws(self) -> int:
        return self.num_estimates * self.num_particles

    def grouped(self, log_w: torch.Tensor) -> torch.Tensor:
        """(M·K, batch) -> (M, K, batch): consecutive draws form an estimate."""
        return log_w.reshape(self.num_estimates, self.num_particles, -1)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        w = self.weights(model, guide, args, kwargs)
        return -w.scale * _log_mean_exp(self.grouped(w.log_p - w.log_q), dim=1).mean(0).sum()


class CIWAE(PerItemELBO):
    r"""Rainforth et al. (2018): a convex combination of the ELBO and the IWAE bound on the same
    K samples, :math:`s \sum_i [\beta \cdot \mathrm{ELBO}_i + (1 - \beta) \cdot \mathrm{IWAE}_{K,i}]`.

    :param float beta: the ELBO's weight, in [0, 1] (1 is the ELBO, 0 IWAE).
    """

    name = "ciwae"

    def __init__(self, num_particles: int = 1, max_plate_nesting: int = 1, beta: float = 0.5):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be a number in [0, 1], got {beta!r}")
        super().__init__(num_particles, max_plate_nesting)
        self.beta = beta

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        w = self.weights(model, guide, args, kwargs)
        log_w = w.log_p - w.log_q
        return -w.scale * (self.beta * log_w.mean(0) + (1 - self.beta) * _log_mean_exp(log_w)).sum()


class PIWAE(MIWAE):
    r"""Rainforth et al. (2018), partially importance weighted: from one set of M·K draws, the
    model (theta) follows IWAE with M·K samples and the guide (phi) follows MIWAE(M, K).

    With :math:`a_{mk}` the weights of IWAE_MK (softmax of log w over all M·K draws) and
    :math:`b_{mk}` MIWAE's (softmax within estimate m, over M), the surrogate

    .. math::
        S = \sum_{mk} a_{mk} \log w_{mk} - \sum_{mk} (b_{mk} - a_{mk}) \log q(\mathrm{stop}(z_{mk}); \phi),

    with the path to z weighted by :math:`b_{mk} / a_{mk}` (:class:`PathWeights`), has theta-gradient
    IWAE_MK's and phi-gradient MIWAE's (through z, and directly through log q). The loss's value
    is -s IWAE_MK, the model's bound. The ratio is formed in log space; a draw whose weight a
    among all M·K underflows to zero passes no gradient to z.
    """

    name = "piwae"

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        path = PathWeights(self.max_plate_nesting)
        w = self.weights(model, guide, args, kwargs, path_weights=path)
        log_q = w.log_q_at_path_values()
        log_w = w.log_p - log_q
        stopped = _stop(log_w)
        model_weights = torch.softmax(stopped, dim=0)  # a: IWAE_MK
        group_lse = self.grouped(stopped).logsumexp(1, keepdim=True)
        miwae_weights = (torch.softmax(self.grouped(stopped), dim=1) / self.num_estimates).reshape_as(log_w)  # b
        # b / a, per estimate, capped below float overflow: an estimate whose weight among all M·K
        # draws underflows has a = 0 (or denormal) for its draws, and 0 × inf would be NaN
        log_ratio = stopped.logsumexp(0) - group_lse - math.log(self.num_estimates)
        ratio = torch.exp(log_ratio.clamp(max=math.log(torch.finfo(log_ratio.dtype).max) - 1.0))
        path.set(ratio.expand(self.num_estimates, self.num_particles, -1).reshape_as(log_w))
        surrogate = (model_weights * log_w).sum() \
            - ((miwae_weights - model_weights) * w.log_q_at_stopped_samples()).sum()
        return -w.scale * _with_value(_log_mean_exp(log_w).sum(), surrogate)
