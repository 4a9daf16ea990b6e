"""ELBO estimators the field compares since 2018, as Pyro ELBOs: STL, DReG, MIWAE, CIWAE, PIWAE.

Each works on any Pyro model and guide whose sample sites lie in the data plate (the outermost
plate, at dim -max_plate_nesting) and whose guide is reparameterized. The K particles of an item
are drawn in one vectorized pass, under a "particles" plate one dim to the left of the data
plate, and each estimator combines the per-item log-weights

    log w_ik = log p(x_i, z_ik) - log q(z_ik | x_i),    z_ik ~ q(z | x_i) reparameterized.

Two gradient tools serve them all, and both only re-run the programs with Pyro's ``replay``, so
they need nothing of the guide but its trace (no ``Distribution.detach``, which torch lacks):

* **q at stopped parameters.** log q(z; stop(phi)) keeps the path through z and drops the direct
  dependence on phi. It is log q(z; phi) - log q(stop(z); phi) + stop(log q(stop(z); phi)): the
  guide replayed on detached samples has exactly the direct phi-gradient, and the same value.
* **theta alone.** log p(x, stop(z)), the model replayed on detached samples, carries the
  decoder's gradient at the drawn z and nothing of phi; subtracting it (with a stopped copy added
  back) removes the theta-gradient from a term without changing its value.

The value of every loss is the negated bound, summed over the items of the batch, as Pyro's
ELBOs; only the gradients differ. These estimators assume that the model's parameters (theta)
and the guide's (phi) are separate, as in a VAE.
"""

from __future__ import annotations

import math
from typing import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.poutine.util import site_is_subsample

from .marginal import per_item_log_density, trace_particles


def _stop(value: torch.Tensor) -> torch.Tensor:
    """A value's stopped copy: the same number, no gradient (the 'surrogate minus its stopped
    copy' terms below change gradients and leave values alone)."""
    return value.detach()


class PerItemWeights:
    """The per-item log-densities of one vectorized draw of K particles: (K, batch) tensors."""

    def __init__(self, model: Callable, guide: Callable, args: tuple, kwargs: dict, num_particles: int,
                 max_plate_nesting: int):
        self.model, self.guide, self.args, self.kwargs = model, guide, args, kwargs
        self.num_particles, self.max_plate_nesting = num_particles, max_plate_nesting
        model_trace, self.guide_trace = trace_particles(model, guide, num_particles, max_plate_nesting, args, kwargs)
        self.batch = self._batch_size(model_trace)
        for name, site in self._sample_sites(self.guide_trace):
            if not site["fn"].has_rsample:
                raise ValueError(f"guide site {name!r} is not reparameterized ({type(site['fn']).__name__}): "
                                 "these estimators need a pathwise gradient through every latent")
        self.log_p = self._sum(model_trace, "model")
        self.log_q = self._sum(self.guide_trace, "guide")

    def _particles(self):
        return pyro.plate("particles", self.num_particles, dim=-(self.max_plate_nesting + 1))

    @staticmethod
    def _sample_sites(trace):
        trace.compute_log_prob()
        return [(name, site) for name, site in trace.nodes.items()
                if site["type"] == "sample" and not site_is_subsample(site)]

    def _batch_size(self, trace) -> int:
        data_dim = -self.max_plate_nesting
        for _, site in self._sample_sites(trace):
            for frame in site["cond_indep_stack"]:
                if frame.dim == data_dim and frame.name != "particles":
                    return frame.size
        raise ValueError(f"the model has no site in a data plate at dim {data_dim}: these estimators "
                         "are per item, so every site must lie in the data plate")

    def _sum(self, trace, program: str) -> torch.Tensor:
        total = 0.0
        for name, site in self._sample_sites(trace):
            total = total + per_item_log_density(site, name, program, self.num_particles, self.batch,
                                                 self.max_plate_nesting, full_weight=False)
        return total

    def _replayed_on_stopped_samples(self, program: Callable, name: str) -> torch.Tensor:
        stopped = self.guide_trace.copy()
        for node, site in stopped.nodes.items():
            if site["type"] == "sample":
                stopped.nodes[node] = {**site, "value": _stop(site["value"])}  # the guide's own trace untouched
        with self._particles():
            trace = poutine.trace(poutine.replay(program, trace=stopped)).get_trace(*self.args, **self.kwargs)
        return self._sum(trace, name)

    def log_q_stopped_parameters(self) -> torch.Tensor:
        """log q(z; stop(phi)): the value of log q, the gradient through z alone."""
        direct = self._replayed_on_stopped_samples(self.guide, "guide")  # the direct phi-gradient only
        return self.log_q - direct + _stop(direct)

    def log_p_stopped_samples(self) -> torch.Tensor:
        """log p(x, stop(z)): the value of log p, the model's gradient at the drawn z alone."""
        return self._replayed_on_stopped_samples(self.model, "model")


class _PerItemELBO(ELBO):
    """Base of the estimators below: ``loss`` and ``loss_and_grads`` from ``differentiable_loss``,
    so that SVI and a torch optimizer drive them alike. Particles are always vectorized."""

    def __init__(self, num_particles: int = 1, max_plate_nesting: int = 1, **kwargs):
        kwargs.pop("vectorize_particles", None)  # always vectorized, under a plate of our own
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting, **kwargs)

    @property
    def draws(self) -> int:
        return self.num_particles

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("these estimators draw their particles themselves (PerItemWeights)")

    def weights(self, model, guide, args, kwargs) -> PerItemWeights:
        return PerItemWeights(model, guide, args, kwargs, self.draws, self.max_plate_nesting)

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()


def _log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return log_w.logsumexp(dim) - math.log(log_w.shape[dim])


class STL_ELBO(_PerItemELBO):
    r"""Roeder et al. (2017), "sticking the landing": the ELBO with the guide's density at stopped
    parameters,

    .. math::
        -\mathcal{L} = -\sum_i \frac{1}{K} \sum_k \left[\log p(x_i, z_{ik})
            - \log q(z_{ik} | x_i; \bar\phi)\right], \qquad \bar\phi = \mathrm{stop}(\phi),

    the same value as Trace_ELBO; its guide gradient drops the score term
    :math:`\nabla_\phi \log q(z;\phi)|_z`, which has mean zero and is the whole gradient noise
    when q is the exact posterior (then every sample's guide gradient is zero).
    """

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        w = self.weights(model, guide, args, kwargs)
        return -(w.log_p - w.log_q_stopped_parameters()).mean(0).sum()


class DReG_IWAE(_PerItemELBO):
    r"""Tucker et al. (2018), doubly reparameterized gradients of the IWAE bound, their eq. 6.

    Value: :math:`-\sum_i \log \frac{1}{K} \sum_k w_{ik}`. Gradients, with
    :math:`\tilde w_{ik} = w_{ik} / \sum_j w_{ij}`:

    .. math::
        \nabla_\theta = \sum_k \tilde w_{ik} \nabla_\theta \log w_{ik} \quad \text{(IWAE's own)},
        \qquad
        \nabla_\phi = \sum_k \tilde w_{ik}^2 \frac{\partial \log w_{ik}}{\partial z_{ik}}
            \frac{\partial z_{ik}}{\partial \phi},

    with log q at stopped parameters in the second. Unbiased for IWAE's guide gradient, and its
    signal-to-noise ratio grows with K where IWAE's falls as 1/sqrt(K). At K = 1 it is STL.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        w = self.weights(model, guide, args, kwargs)
        log_w = w.log_p - w.log_q_stopped_parameters()  # phi only through z
        log_w_theta = w.log_p_stopped_samples() - _stop(w.log_q)  # theta only
        normalized = torch.softmax(_stop(log_w), dim=0)
        surrogate = (normalized**2 * (log_w - log_w_theta) + normalized * log_w_theta).sum()
        bound = _log_mean_exp(_stop(log_w)).sum()
        return -(bound + surrogate - _stop(surrogate))


class MIWAE(_PerItemELBO):
    r"""Rainforth et al. (2018): the mean of M independent IWAE bounds of K samples each,

    .. math::
        \mathcal{L} = \sum_i \frac{1}{M} \sum_{m=1}^{M} \log \frac{1}{K} \sum_{k=1}^{K} w_{imk},

    from M·K draws. M = 1 is IWAE, K = 1 the ELBO with M particles.
    """

    def __init__(self, num_particles: int = 1, num_estimates: int = 1, **kwargs):
        super().__init__(num_particles=num_particles, **kwargs)
        self.num_estimates = num_estimates

    @property
    def draws(self) -> int:
        return self.num_estimates * self.num_particles

    def grouped(self, log_w: torch.Tensor) -> torch.Tensor:
        """(M·K, batch) -> (M, K, batch): consecutive draws form an estimate."""
        return log_w.reshape(self.num_estimates, self.num_particles, -1)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        w = self.weights(model, guide, args, kwargs)
        return -_log_mean_exp(self.grouped(w.log_p - w.log_q), dim=1).mean(0).sum()


class CIWAE(_PerItemELBO):
    r"""Rainforth et al. (2018): a convex combination of the ELBO and the IWAE bound on the same
    K samples, :math:`\beta \cdot \mathrm{ELBO} + (1 - \beta) \cdot \mathrm{IWAE}_K`, per item."""

    def __init__(self, num_particles: int = 1, beta: float = 0.5, **kwargs):
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        super().__init__(num_particles=num_particles, **kwargs)
        self.beta = beta

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        w = self.weights(model, guide, args, kwargs)
        log_w = w.log_p - w.log_q
        return -(self.beta * log_w.mean(0) + (1 - self.beta) * _log_mean_exp(log_w)).sum()


class PIWAE(MIWAE):
    r"""Rainforth et al. (2018), partially importance weighted: from one set of M·K draws, the
    model (theta) follows IWAE with M·K samples and the guide (phi) follows MIWAE(M, K).

    One loss carries both: with :math:`\log w^\theta = \log p(x, \mathrm{stop}(z)) - \mathrm{stop}
    (\log q)` (theta's gradient alone),

    .. math::
        S = \mathrm{IWAE}_{MK}(\log w^\theta)
            + \mathrm{MIWAE}_{M,K}(\log w) - \sum_{mk} \mathrm{stop}(\nabla_{\log w_{mk}}
              \mathrm{MIWAE}) \log w^\theta_{mk},

    whose theta-gradient is IWAE_MK's (the last term cancels MIWAE's) and whose phi-gradient is
    MIWAE's. The loss's value is -IWAE_MK, the model's bound.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        w = self.weights(model, guide, args, kwargs)
        log_w = w.log_p - w.log_q
        log_w_theta = w.log_p_stopped_samples() - _stop(w.log_q)
        model_bound = _log_mean_exp(log_w_theta).sum()
        guide_bound = _log_mean_exp(self.grouped(log_w), dim=1).mean(0).sum()
        # d MIWAE / d log w_mk = softmax within estimate m, over M
        miwae_weights = torch.softmax(self.grouped(_stop(log_w)), dim=1).reshape_as(log_w) / self.num_estimates
        theta_of_guide_bound = (miwae_weights * log_w_theta).sum()
        surrogate = model_bound + guide_bound - theta_of_guide_bound
        return -(_stop(model_bound) + surrogate - _stop(surrogate))
