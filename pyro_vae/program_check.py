"""The structure of a Pyro program, checked once before any vectorized run.

Every estimator here draws its particles under a "particles" plate one dim left of the program's
plates, and the per-item ones (iwae, renyi, stl, dreg, miwae, ciwae, piwae, and log p(x))
combine log-weights item by item. A program that does not fit that frame would otherwise fail
deep inside Pyro or the program itself, or be scored as something it is not. So the guide is
traced once, and the model on its draws, *without* the particles plate (on a forked random
stream: the run's draws are untouched), and a program is refused, by site name and with the
fix, when

* ``max_plate_nesting`` is not a whole number, or is smaller than the plates the program nests
  (the number needed is given, as Pyro gives it);
* an estimator needs a data plate (``per_item``) and a sample site lies outside it: a global
  latent, or a program with no plate at the outermost dim ``-max_plate_nesting``;
* an estimator needs a pathwise gradient (``pathwise``) and a guide site is not reparameterized.

trace and meanfield need neither: like Pyro's Trace_ELBO they take global sites and, with Pyro's
score-function surrogate, non-reparameterized guide sites.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample


@dataclass(frozen=True)
class Requirements:
    """What an estimator needs of a program. ``vectorized``: particles in a plate of their own,
    so ``max_plate_nesting`` must be a number; ``per_item``: every sample site in the data plate;
    ``pathwise``: every guide sample site reparameterized."""

    vectorized: bool = True
    per_item: bool = True
    pathwise: bool = True


@dataclass(frozen=True)
class ProgramShape:
    """What the check found that a run needs: the guide's sample sites without a pathwise
    gradient (they need a score-function surrogate)."""

    score_sites: tuple[str, ...] = ()


def sample_sites(trace: poutine.Trace) -> list[tuple[str, dict]]:
    """The sample sites of a trace, without the subsample sites that plates add."""
    return [(name, site) for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)]


def check_max_plate_nesting(max_plate_nesting, vectorized: bool = True, per_item: bool = True) -> None:
    """A ValueError unless ``max_plate_nesting`` is a whole number that a vectorized run can use
    (infinite, Pyro's default when it guesses, is refused: the particles plate needs a dim)."""
    if not (vectorized or per_item) and max_plate_nesting == math.inf:
        return  # Pyro's own guess serves a program run particle by particle
    if isinstance(max_plate_nesting, bool) or not isinstance(max_plate_nesting, (int, float)) \
            or max_plate_nesting != max_plate_nesting or max_plate_nesting == math.inf \
            or int(max_plate_nesting) != max_plate_nesting:
        raise ValueError(f"max_plate_nesting must be a whole number of nested plates, got {max_plate_nesting!r}: "
                         "vectorized particles go in a plate one dim left of them, so it cannot be "
                         "guessed (infinite); pass the number of plates the program nests")
    least = 1 if per_item else 0
    if max_plate_nesting < least:
        raise ValueError(f"max_plate_nesting must be at least {least} (the data plate), got {max_plate_nesting}")


def program_key(fn: Callable) -> tuple:
    """Bound methods are made afresh on each attribute access: key them by object and function."""
    return (id(fn.__self__), fn.__func__) if hasattr(fn, "__func__") else (id(fn), None)


def _owner(fn: Callable):
    return getattr(fn, "__self__", fn)


def trace_once(model: Callable, guide: Callable, args: tuple, kwargs: dict,
               particles: ParticlesPlate | None = None) -> tuple[poutine.Trace, poutine.Trace]:
    """(model trace, guide trace) of one draw, under ``particles`` if given, leaving torch's
    random stream (CPU, and the current CUDA device if one is in use) as it was."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), particles or contextlib.nullcontext():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def _traces_for_check(model, guide, args, kwargs, max_plate_nesting, num_particles: int):
    """The program traced without particles; a program that fails so (it asserts the shapes it
    has under vectorized particles) is traced under the particles plate instead, and if that
    fails too, the first error is raised. Returns the traces and whether particles were used."""
    try:
        return trace_once(model, guide, args, kwargs), False
    except Exception as error:
        if num_particles < 2 or not isinstance(max_plate_nesting, int) or isinstance(error, ValueError):
            raise
        try:
            return trace_once(model, guide, args, kwargs, particles_plate(num_particles, max_plate_nesting)), True
        except Exception:
            raise error from None


def check_program(model: Callable, guide: Callable, args: tuple, kwargs: dict, max_plate_nesting,
                  requirements: Requirements, estimator: str, num_particles: int = 1) -> ProgramShape:
    """Trace the program once and refuse what ``requirements`` rule out (see the module's
    docstring); ``estimator`` names the estimator in the message."""
    if max_plate_nesting == math.inf and (requirements.vectorized or requirements.per_item):
        model_trace, guide_trace = trace_once(model, guide, args, kwargs)  # to say how many plates it nests
        needed = max([0, *(-f.dim for trace in (model_trace, guide_trace)
                           for _, site in sample_sites(trace) for f in _plates(site))])
        raise ValueError(f"max_plate_nesting is infinite (Pyro's default, which it guesses): {estimator} puts "
                         "particles in a plate one dim left of the program's plates, so it needs the number; "
                         f"this program nests {needed}: pass max_plate_nesting={max(needed, 1)}")
    check_max_plate_nesting(max_plate_nesting, requirements.vectorized, requirements.per_item)
    (model_trace, guide_trace), vectorized = _traces_for_check(model, guide, args, kwargs, max_plate_nesting,
                                                               num_particles if requirements.vectorized else 1)
    sites = [("guide", name, site) for name, site in sample_sites(guide_trace)] + \
            [("model", name, site) for name, site in sample_sites(model_trace)]
    needed, deepest = 0, None
    for program, name, site in sites:
        dims = [-f.dim for f in _plates(site)]
        depth = max([len(site["fn"].batch_shape) - vectorized, *dims])
        if depth > needed:
            needed, deepest = depth, (program, name)
    if requirements.vectorized and needed > max_plate_nesting:
        program, name = deepest
        raise ValueError(f"max_plate_nesting={max_plate_nesting} is too small for this program: {program} site "
                         f"{name!r} has {needed} batch dims (its plates, and any batch dims of its "
                         f"distribution). Try increasing max_plate_nesting to at least {needed}")
    data_plate = None
    for _, _, site in sites:
        for frame in _plates(site):
            if frame.dim == -max_plate_nesting and data_plate is None:
                data_plate = (frame.name, frame.size)
    if requirements.per_item:
        _check_per_item(sites, max_plate_nesting, data_plate, estimator)
    score_sites = tuple(name for name, site in sample_sites(guide_trace)
                        if not site["is_observed"] and not site["fn"].has_rsample)
    if requirements.pathwise and score_sites:
        name = score_sites[0]
        raise ValueError(f"guide site {name!r} is not reparameterized ({type(guide_trace.nodes[name]['fn']).__name__}):"
                         f" {estimator} needs a pathwise gradient through every latent; trace and "
                         "meanfield take it with Pyro's score-function surrogate")
    return ProgramShape(score_sites)


def _plates(site: dict) -> list:
    """The program's own vectorized plates of a site (not the particles plate)."""
    return [f for f in site["cond_indep_stack"] if f.vectorized and f.name not in PARTICLE_PLATES]


def _check_per_item(sites: list, max_plate_nesting: int, data_plate, estimator: str) -> None:
    if not sites:
        raise ValueError(f"the model and guide have no sample sites: {estimator} bounds each item's log p(x), "
                         "and there is no item")
    for program, name, site in sites:
        plates = _plates(site)
        # the same dim and size: model and guide may name their data plates apart
        inside = any(f.dim == -max_plate_nesting and f.size == data_plate[1] for f in plates) \
            if data_plate else False
        if not inside:
            found = ", ".join(f"{f.name!r} (dim {f.dim})" for f in plates) or "none"
            where = f"the data plate {data_plate[0]!r}" if data_plate else "a data plate"
            raise ValueError(f"{program} site {name!r} is not in {where} at dim -{max_plate_nesting} (its "
                             f"plates: {found}): {estimator} bounds each item's log p(x) separately, so every "
                             "sample site must lie in one data plate, the outermost; a global latent needs "
                             "trace or meanfield, which take any program")


class ProgramChecks:
    """Checks each (model, guide) pair once, at its first use, and remembers what it found."""

    def __init__(self, requirements: Requirements, estimator: str, num_particles: int = 1):
        self.requirements, self.estimator, self.num_particles = requirements, estimator, num_particles
        self._seen: dict = {}

    def checked(self, model: Callable, guide: Callable) -> bool:
        """Whether this pair was checked already."""
        return (program_key(model), program_key(guide)) in self._seen

    def __call__(self, model: Callable, guide: Callable, args: tuple, kwargs: dict,
                 max_plate_nesting) -> ProgramShape:
        key = (program_key(model), program_key(guide))
        shape = self._seen.get(key, (None,))[-1]
        if shape is None:
            shape = check_program(model, guide, args, kwargs, max_plate_nesting, self.requirements,
                                  self.estimator, self.num_particles)
            # the programs are kept with what was found, so that their ids are never reused
            self._seen[key] = (_owner(model), _owner(guide), shape)
        return shape


PARTICLE_PLATES = ("particles", "num_particles_vectorized")  # ours, and Pyro's name for it


class ParticlesPlate(pyro.plate):
    """The plate that vectorizes particles. Unlike a data plate it leaves ``pyro.param(...,
    event_dim=...)`` statements alone: a parameter is shared by the particles, and a data plate's
    check of its shape against the particle count would refuse a valid program."""

    def _postprocess_message(self, msg) -> None:
        if msg["type"] == "param":
            return
        super()._postprocess_message(msg)


def particles_plate(num_particles: int, max_plate_nesting: int) -> ParticlesPlate:
    """The "particles" plate, one dim left of the program's ``max_plate_nesting`` plates."""
    return ParticlesPlate("particles", num_particles, dim=-(int(max_plate_nesting) + 1))
