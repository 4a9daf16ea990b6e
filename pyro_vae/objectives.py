"""The training objectives behind ``--elbo``: a registry of Pyro ELBO estimators.

``trace``      Trace_ELBO: the Monte-Carlo ELBO, (1/L) sum_l [log p(x, z_l) - log q(z_l|x)],
               z_l ~ q(z|x) reparameterized (Kingma & Welling's SGVB estimator A).
``meanfield``  TraceMeanField_ELBO: the same bound with KL(q(z|x) || p(z)) in closed form
               (estimator B of the paper): (1/L) sum_l log p(x|z_l) - KL.

Each entry maps the flags (particles L, vectorized or not, jit or not) to a Pyro ELBO instance.
Adding an estimator is one function and one line in ``OBJECTIVES``.
"""

from __future__ import annotations

from typing import Callable

from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    JitTraceMeanField_ELBO,
    Trace_ELBO,
    TraceMeanField_ELBO,
)

from .cli import UsageError

MAX_PLATE_NESTING = 1  # the "data" plate; vectorized particles live at dim -2


def _pick(plain: type, jitted: type, num_particles: int, vectorize: bool, jit: bool) -> ELBO:
    kwargs = dict(num_particles=num_particles, vectorize_particles=vectorize,
                  max_plate_nesting=MAX_PLATE_NESTING)
    return jitted(ignore_jit_warnings=True, **kwargs) if jit else plain(**kwargs)


def _trace(num_particles: int, vectorize: bool, jit: bool, **_) -> ELBO:
    return _pick(Trace_ELBO, JitTrace_ELBO, num_particles, vectorize, jit)


def _meanfield(num_particles: int, vectorize: bool, jit: bool, **_) -> ELBO:
    return _pick(TraceMeanField_ELBO, JitTraceMeanField_ELBO, num_particles, vectorize, jit)


OBJECTIVES: dict[str, Callable[..., ELBO]] = {
    "trace": _trace,
    "meanfield": _meanfield,
}


def make_elbo(name: str, num_particles: int = 1, vectorize: bool = False, jit: bool = False,
              **options) -> ELBO:
    """The Pyro ELBO named ``name`` with L = ``num_particles``."""
    if name not in OBJECTIVES:
        raise UsageError(f"unknown --elbo {name!r}; choose from {', '.join(OBJECTIVES)}")
    if num_particles < 1:
        raise UsageError(f"--num-particles must be a positive integer, got {num_particles}")
    return OBJECTIVES[name](num_particles=num_particles, vectorize=vectorize, jit=jit, **options)
