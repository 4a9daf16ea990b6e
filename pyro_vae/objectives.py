"""The training objectives behind ``--elbo``: one record per estimator, in one registry.

``trace``      Trace_ELBO: the Monte-Carlo ELBO, (1/L) sum_l [log p(x, z_l) - log q(z_l|x)],
               z_l ~ q(z|x) reparameterized (Kingma & Welling's SGVB estimator A); its
               differentiable loss computed without reading it back to the host.
``meanfield``  TraceMeanField_ELBO: the same bound with KL(q(z|x) || p(z)) in closed form
               (estimator B of the paper): (1/L) sum_l log p(x|z_l) - KL; also without a read.
``iwae``       the importance-weighted bound of Burda et al. with k = L samples per image:
               log (1/L) sum_l w_l, w_l = p(x, z_l) / q(z_l|x); Renyi's bound at alpha = 0.
``renyi``      Li & Turner's Renyi bound, 1/(1-alpha) log (1/L) sum_l w_l^(1-alpha) (``alpha``).
``stl``        the ELBO with q at stopped parameters: Roeder et al.'s "sticking the landing".
``dreg``       the IWAE bound with Tucker et al.'s doubly reparameterized guide gradient.
``miwae``      the mean of M IWAE bounds of K = L samples (``num_estimates`` M).
``ciwae``      beta * ELBO + (1 - beta) * IWAE_K on the same samples (``beta``).
``piwae``      the model trained on IWAE with M*K samples, the guide on MIWAE(M, K).

The last seven are in estimators.py, with their math. trace and meanfield take any program
Pyro's Trace_ELBO takes (global latents, and non-reparameterized guide sites through Pyro's
score-function surrogate); the others bound each item of a data plate and need every site in
it, and a reparameterized guide (program_check.py refuses anything else by site name).

Each :class:`Objective` record holds the estimator's factory, its options with their defaults,
and how its sample counts are written; ``make_elbo`` checks the options against it, and the
commands' ``--elbo`` choices, labels and option flags are read from :data:`OBJECTIVES`.
:func:`register_objective` adds one.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Callable

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from torch.distributions import kl_divergence

from . import estimators
from .marginal import MAX_PLATE_NESTING
from .program_check import ParticlesPlate, ProgramChecks, ProgramShape, Requirements, sample_sites


class _ChecksPrograms:
    """The program check of trace and meanfield: a number for max_plate_nesting when particles
    are vectorized; both take global sites, and trace takes non-reparameterized guide sites
    (meanfield refuses them, by name, as Pyro's TraceMeanField_ELBO does)."""

    estimator_name: str
    pathwise: bool  # whether a non-reparameterized guide site is refused

    def __init__(self, *, num_particles: int = 1, vectorize_particles: bool = False,
                 max_plate_nesting=MAX_PLATE_NESTING):
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles,
                         max_plate_nesting=max_plate_nesting)
        self.given_max_plate_nesting = max_plate_nesting  # Pyro adds the particles' dim to its own copy
        vectorized = self.vectorize_particles and self.num_particles > 1
        self.checks = ProgramChecks(Requirements(vectorized=vectorized, per_item=False, pathwise=self.pathwise),
                                    self.estimator_name, self.num_particles)

    def program_shape(self, model, guide, args, kwargs) -> ProgramShape:
        return self.checks(model, guide, args, kwargs, self.given_max_plate_nesting)

    def loss(self, model, guide, *args, **kwargs):
        self.program_shape(model, guide, args, kwargs)
        return super().loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        self.program_shape(model, guide, args, kwargs)
        return super().loss_and_grads(model, guide, *args, **kwargs)

    def _vectorized_num_particles(self, fn):
        """Pyro's, with a plate that leaves ``pyro.param(..., event_dim=...)`` alone."""
        def wrapped(*args, **kwargs):
            if self.num_particles == 1:
                return fn(*args, **kwargs)
            with ParticlesPlate("num_particles_vectorized", self.num_particles, dim=-self.max_plate_nesting):
                return fn(*args, **kwargs)
        return wrapped


class SyncFreeTrace_ELBO(_ChecksPrograms, Trace_ELBO):
    r"""Pyro's :class:`~pyro.infer.Trace_ELBO` whose differentiable loss never leaves the device.

    .. math::
        -\mathcal{L} = -\frac{1}{L} \sum_{l=1}^{L} \left[\log p(x, z_l) - \log q(z_l | x)\right],
        \qquad z_l \sim q(z | x) \text{ reparameterized}

    ``Trace_ELBO.differentiable_loss`` also forms a float copy of the loss: ``.item()`` of every
    site's log-probability sum and of the total, and a NaN check forward and backward. Each is a
    host read, which on a GPU stalls the queue of kernels every step. This is the same tensor (same
    value, same gradients, a test checks both) with no read; the trainer checks the loss for NaN
    when it reads it. A guide with a non-reparameterized site takes Pyro's own loss, with its
    score-function surrogate.

    While Pyro's validation is on (the trainer's first step) the traces are Pyro's own, with every
    check. Once it is off, the model and guide are traced as Pyro traces them but the log-densities
    are summed straight from the sites: no trace copies to drop the plates' subsample sites, no
    score parts (zero for reparameterized sites), about 0.1 ms less Python a step on the CPU.
    """

    estimator_name = "trace"

    pathwise = False  # score-function guides take Pyro's own loss

    def differentiable_loss(self, model, guide, *args, **kwargs):
        if self.program_shape(model, guide, args, kwargs).score_sites:
            return Trace_ELBO.differentiable_loss(self, model, guide, *args, **kwargs)
        loss = 0.0
        for model_trace, guide_trace in self._traces(model, guide, args, kwargs):
            elbo_particle = 0.0
            for _, site in sample_sites(model_trace):
                elbo_particle = elbo_particle + _log_prob_sum(site)
            for _, site in sample_sites(guide_trace):
                elbo_particle = elbo_particle - _log_prob_sum(site)
            loss = loss - elbo_particle / self.num_particles
        return loss if torch.is_tensor(loss) else torch.zeros(())  # a program with no sample sites

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


class SyncFreeTraceMeanField_ELBO(_ChecksPrograms, TraceMeanField_ELBO):
    r"""Pyro's :class:`~pyro.infer.TraceMeanField_ELBO` whose differentiable loss never leaves the
    device, as :class:`SyncFreeTrace_ELBO` for ``trace``:

    .. math::
        -\mathcal{L} = -\frac{1}{L} \sum_{l=1}^{L} \log p(x | z_l) + \mathrm{KL}(q(z|x) \,\|\, p(z))

    with the KL in closed form where torch has it, and log p(z_l) - log q(z_l|x) where it has not.
    Pyro's version reads the loss back (``.item()``, a NaN check) every particle; this one has the
    same value and gradients (a test checks both) and no read, so a traced step holds no host read.
    Like Pyro's, it needs a reparameterized guide: another is refused by site name.
    """

    estimator_name = "meanfield"

    pathwise = True

    def differentiable_loss(self, model, guide, *args, **kwargs):
        self.program_shape(model, guide, args, kwargs)
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            elbo_particle = 0.0
            for name, site in sample_sites(model_trace):
                if site["is_observed"]:
                    elbo_particle = elbo_particle + _log_prob_sum(site)
                    continue
                guide_site = guide_trace.nodes[name]
                try:
                    kl = kl_divergence(guide_site["fn"], site["fn"])
                    elbo_particle = elbo_particle - _sum(scale_and_mask(kl, guide_site["scale"], guide_site["mask"]))
                except NotImplementedError:
                    elbo_particle = elbo_particle + _log_prob_sum(site) - _log_prob_sum(guide_site)
            for name, site in sample_sites(guide_trace):  # auxiliary guide sites
                if name not in model_trace.nodes:
                    elbo_particle = elbo_particle - _log_prob_sum(site)
            loss = loss - elbo_particle / self.num_particles
        return loss if torch.is_tensor(loss) else torch.zeros(())  # a program with no sample sites


def _sum(value):
    """A tensor's sum; a number (a term Pyro found identically zero, or masked out) as it is."""
    return value.sum() if torch.is_tensor(value) else value


def _log_prob_sum(site) -> torch.Tensor:
    """A sample site's scaled and masked log-density, summed; Pyro's memoized sum if it has one."""
    if "log_prob_sum" in site:
        return site["log_prob_sum"]
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return _sum(scale_and_mask(log_prob, site["scale"], site["mask"]))


@dataclass(frozen=True)
class Objective:
    """One estimator in the registry.

    :param name: what ``make_elbo`` and ``--elbo`` call it.
    :param factory: ``factory(num_particles=, vectorize=, jit=, max_plate_nesting=, **options)``
        returning a Pyro ELBO; it raises ValueError for a bad option value.
    :param options: the options it takes, with their defaults; None takes any (unchecked).
    :param summary: one line for ``--help`` and the docs.
    :param sample_symbol: how the literature writes its samples per item: L for the ELBO's, K for
        an importance-weighted bound's.
    :param multi_estimate: it averages M estimates of K samples (option ``num_estimates``, which
        it then requires).
    :param option_help: option -> one line for ``--help`` and the docs.
    """

    name: str
    factory: Callable[..., ELBO]
    options: dict | None = field(default_factory=dict)
    summary: str = ""
    sample_symbol: str = "K"
    multi_estimate: bool = False
    option_help: dict = field(default_factory=dict)

    @property
    def samples(self) -> str:
        """How its samples per item are written: 'L', 'K' or 'M×K'."""
        return f"M×{self.sample_symbol}" if self.multi_estimate else self.sample_symbol

    def label(self, num_particles: int, num_estimates: int = 1) -> str:
        """'trace L=1', 'iwae K=5', 'miwae M=2 K=4'."""
        if self.multi_estimate:
            return f"{self.name} M={num_estimates} K={num_particles}"
        return f"{self.name} {self.sample_symbol}={num_particles}"


def _no_jit(name: str, jit: bool) -> None:
    if jit:
        raise ValueError(f"jit is not available for the {name} estimator (Pyro has a Jit variant of trace and "
                         "meanfield only)")


def _trace(num_particles, vectorize, jit, max_plate_nesting):
    settings = dict(num_particles=num_particles, vectorize_particles=vectorize, max_plate_nesting=max_plate_nesting)
    return JitTrace_ELBO(ignore_jit_warnings=True, **settings) if jit else SyncFreeTrace_ELBO(**settings)


def _meanfield(num_particles, vectorize, jit, max_plate_nesting):
    settings = dict(num_particles=num_particles, vectorize_particles=vectorize, max_plate_nesting=max_plate_nesting)
    return JitTraceMeanField_ELBO(ignore_jit_warnings=True, **settings) if jit \
        else SyncFreeTraceMeanField_ELBO(**settings)


def _per_item(cls: type, name: str) -> Callable[..., ELBO]:
    """The factory of an estimator class of estimators.py; its signature shows the class's own
    options (the constructor's parameters after num_particles and max_plate_nesting, but the
    particles' vectorization, a setting) and its docstring is the class's, so that the registry
    reads the options, their defaults and their help from there."""
    def factory(num_particles, vectorize, jit, max_plate_nesting, **options):
        _no_jit(name, jit)
        if not cls.vectorize_always:
            options["vectorize_particles"] = vectorize
        return cls(num_particles, max_plate_nesting, **options)
    factory.__name__ = f"_{name}"
    factory.__doc__ = "\n\n".join(inspect.getdoc(c) or "" for c in cls.__mro__ if c.__module__ == cls.__module__)
    settings = [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in _SETTINGS]
    own = [p for p in list(inspect.signature(cls).parameters.values())[2:] if p.name != "vectorize_particles"]
    factory.__signature__ = inspect.Signature(settings + own)
    return factory


OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str, factory: Callable[..., ELBO], options: dict | None = None, *,
                       summary: str = "", sample_symbol: str = "K", multi_estimate: bool = False,
                       option_help: dict | None = None) -> Objective:
    """Make ``factory`` available as ``make_elbo(name, ...)`` (and to the commands' ``--elbo``).

    It is called with ``num_particles``, ``vectorize``, ``jit``, ``max_plate_nesting`` and the
    options given to make_elbo as keywords, and returns a Pyro ELBO. ``options`` (option ->
    default) are the options it takes; by default they are read from its signature (its keyword
    parameters beyond those four; a ``**kwargs`` takes any). ``make_elbo`` refuses any other.

    :param str name: the name ``make_elbo`` and ``--elbo`` take.
    :param callable factory: ``factory(num_particles=, vectorize=, jit=, max_plate_nesting=,
        **options)`` returning a Pyro ELBO (a class with that signature will do).
    :param dict options: option -> default; None reads them from the factory's signature.
    :param str summary: one line for the commands' help and docs/cli.md's table.
    :param str sample_symbol: how labels name the sample count ("L" for the ELBO's particles).
    :param bool multi_estimate: the estimator takes M estimates of K (labels "M=2 K=4").
    :param dict option_help: option -> one line of help; None reads them from the factory's
        docstring (its ``:param type option: text`` lines).
    :returns: the registered record.
    :raises ValueError: if ``name`` is taken.
    """
    if not callable(factory):
        raise TypeError(f"the factory of objective {name!r} must be callable, got {type(factory).__name__}")
    if name in OBJECTIVES:
        raise ValueError(f"objective {name!r} is already registered")
    if options is None:
        options = _signature_options(factory)
    if option_help is None:
        option_help = _param_docs(inspect.getdoc(factory) or "")
    record = Objective(name, factory, options, summary, sample_symbol, multi_estimate,
                       {option: option_help[option] for option in options or () if option in option_help})
    OBJECTIVES[name] = record
    return record


_SETTINGS = ("num_particles", "vectorize", "jit", "max_plate_nesting")


def _signature_options(factory: Callable) -> dict | None:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name: p.default for p in parameters if p.name not in _SETTINGS}


def _param_docs(docstring: str) -> dict[str, str]:
    """``:param float alpha: text`` lines (continued on indented lines) -> {'alpha': 'text'};
    the first of a name wins."""
    found = {}
    for match in re.finditer(r"^:param (?:[\w.\[\], ]+ )?(\w+): (.*(?:\n[ \t]+\S.*)*)", docstring, flags=re.M):
        found.setdefault(match.group(1), " ".join(match.group(2).split()))
    return found


# each estimator's options and defaults are read from its factory's (or class's) signature, their
# help from its docstring's :param lines
register_objective("trace", _trace, summary="Trace_ELBO, the Monte-Carlo ELBO (L samples)", sample_symbol="L")
register_objective("meanfield", _meanfield, summary="TraceMeanField_ELBO, the ELBO with KL in closed form",
                   sample_symbol="L")
register_objective("iwae", _per_item(estimators.IWAE, "iwae"), summary="the importance-weighted bound (Burda et al.)")
register_objective("renyi", _per_item(estimators.RenyiBound, "renyi"), summary="the Renyi bound (Li & Turner)")
register_objective("stl", _per_item(estimators.STL_ELBO, "stl"),
                   summary="the ELBO, sticking the landing (Roeder et al.)", sample_symbol="L")
register_objective("dreg", _per_item(estimators.DReG_IWAE, "dreg"),
                   summary="IWAE with doubly reparameterized gradients (Tucker et al.)")
register_objective("miwae", _per_item(estimators.MIWAE, "miwae"),
                   summary="the mean of M IWAE bounds (Rainforth et al.)", multi_estimate=True)
register_objective("ciwae", _per_item(estimators.CIWAE, "ciwae"),
                   summary="beta ELBO + (1 - beta) IWAE (Rainforth et al.)")
register_objective("piwae", _per_item(estimators.PIWAE, "piwae"),
                   summary="model on IWAE_MK, guide on MIWAE(M, K) (Rainforth et al.)", multi_estimate=True)


def objective_label(name: str, num_particles: int, num_estimates: int = 1) -> str:
    """'trace L=1', 'iwae K=5', 'miwae M=2 K=4': an estimator and its sample counts as the
    literature writes them (L samples of the ELBO, K of an importance-weighted bound)."""
    record = OBJECTIVES.get(name)
    if record is None:
        return f"{name} K={num_particles}"
    return record.label(num_particles, num_estimates)


def takers(option: str) -> list[str]:
    """The registered estimators that take ``option``."""
    return [name for name, record in OBJECTIVES.items() if record.options is not None and option in record.options]


@dataclass(frozen=True)
class EstimatorOption:
    """An option some registered estimators take, as the commands offer it (``--num-estimates``).

    :param name: its keyword (``num_estimates``).
    :param default: its first taker's default.
    :param help: its first taker's help line.
    :param takers: the estimators that take it.
    :param required: every taker needs it given (a multi-estimate estimator's ``num_estimates``).
    """

    name: str
    default: object
    help: str
    takers: tuple[str, ...]
    required: bool

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def estimator_options() -> list[EstimatorOption]:
    """Every option of the registered estimators, in the order they were registered."""
    found: dict[str, EstimatorOption] = {}
    for record in OBJECTIVES.values():
        for option, default in (record.options or {}).items():
            if option not in found:
                takers_ = tuple(takers(option))
                required = option == "num_estimates" and all(OBJECTIVES[t].multi_estimate for t in takers_)
                found[option] = EstimatorOption(option, default, record.option_help.get(option, ""), takers_, required)
    return list(found.values())


def check_options(name: str, options: dict) -> None:
    """A ValueError for an option the estimator does not take, naming those that do."""
    record = OBJECTIVES[name]
    if record.options is None:
        return
    for option in options:
        if option not in record.options:
            others = takers(option)
            hint = f" ({' and '.join(others)} take{'s' if len(others) == 1 else ''} it)" if others else ""
            accepted = ", ".join(record.options) or "none"
            raise ValueError(f"the {name} estimator takes no option {option!r}{hint}; its options: {accepted}")


def make_elbo(name: str, num_particles: int = 1, vectorize: bool = False, jit: bool = False,
              max_plate_nesting: int = MAX_PLATE_NESTING, **options) -> ELBO:
    """The Pyro ELBO registered as ``name`` with L = ``num_particles`` samples per item, drawn in
    one vectorized pass if ``vectorize`` (particles at dim -(max_plate_nesting + 1)); ``options``
    go to the estimator (e.g. ``alpha`` for renyi) and are checked against its record: an option
    it does not take, or a bad value, is a ValueError. Use it as any Pyro ELBO:
    ``elbo.differentiable_loss(model, guide, x)`` or ``pyro.infer.SVI(model, guide, optim, elbo)``.

    :param str name: ``trace``, ``meanfield``, ``iwae``, ``renyi``, ``stl``, ``dreg``,
        ``miwae``, ``piwae``, ``ciwae`` or one registered by :func:`register_objective`.
    :param int num_particles: L (the ELBO's samples) or K (a multi-sample bound's) per item.
    :param bool vectorize: draw the particles in one vectorized pass.
    :param bool jit: Pyro's ``Jit*`` variant (trace and meanfield only).
    :param int max_plate_nesting: the number of plates the programs nest.
    :param options: the estimator's own (``alpha``, ``beta``, ``num_estimates``).
    :returns: a :class:`pyro.infer.ELBO`.

    Each estimator's class documents its bound, gradient and reference (pyro_vae/estimators.py,
    pyro_vae/objectives.py; docs/estimators.md compares them).
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; registered: {', '.join(OBJECTIVES)}")
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
    check_options(name, options)
    return OBJECTIVES[name].factory(num_particles=num_particles, vectorize=vectorize, jit=jit,
                                    max_plate_nesting=max_plate_nesting, **options)
