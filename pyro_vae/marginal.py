"""Importance-sampled estimate of the marginal log-likelihood log p(x), image by image.

For each image x, with z_1..z_K ~ q(z|x) drawn from the guide,

    log w_k      = log p(x, z_k) - log q(z_k|x)
    log p^(x)    = logsumexp_k log w_k - log K              (Burda et al. 2016, eq. 15)
    ELBO^        = (1/K) sum_k log w_k                      (the K=1 bound, averaged)
    IWAE_k^      = mean over the K/k groups of k samples of logsumexp(group) - log k
    ESS          = (sum_k w_k)^2 / sum_k w_k^2              (1 <= ESS <= K)

E[log p^(x)] <= log p(x) by Jensen's inequality (p^ is unbiased for p(x), log is concave), and
E[ELBO^] <= E[IWAE_k^] <= E[log p^] for k <= K: the estimate is a stochastic lower bound whose
gap closes as K grows. The log-weights come from Pyro itself (the guide traced under a
"particles" plate, the model replayed on its samples), so any model/guide pair whose every
sample site lies in the data plate can be scored: the outermost plate, at dim
-max_plate_nesting, of the size of the batch; the particles live one dim further left. A site
outside it (a global latent), scaled (a subsampled plate) or shaped otherwise is refused, since
its log-density would be pooled over the batch and not be per item. Samples and items are
processed in chunks whose size follows ``max_memory_mb``; the sums are streamed in float64, so
memory does not grow with K.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Container

import pyro
import pyro.poutine as poutine
import torch
from tqdm.auto import tqdm

from .distributed import World, gather_objects
from .program_check import Requirements, check_program, particles_plate, sample_sites
from .seeds import derived_seed, forked_rng

MAX_PLATE_NESTING = 1  # the seed VAE's: its data plate; vectorized particles live at dim -2


def trace_particles(model: Callable, guide: Callable, num_samples: int, max_plate_nesting: int,
                    args: tuple, kwargs: dict) -> tuple[poutine.Trace, poutine.Trace]:
    """(model trace, guide trace) of ``num_samples`` vectorized draws from the guide, under a
    "particles" plate left of the data plate, the model replayed on them."""
    with particles_plate(num_samples, max_plate_nesting):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def log_importance_weights(model: Callable, guide: Callable, data: torch.Tensor, num_samples: int,
                           *args, max_plate_nesting: int = MAX_PLATE_NESTING, **kwargs) -> torch.Tensor:
    """(num_samples, len(data)) tensor of log p(x, z) - log q(z|x), z ~ q(z|x), via Pyro traces;
    ``model(data, *args, **kwargs)`` and the guide alike. Raises ValueError for a site whose
    log-density is not per item (see the module's docstring)."""
    model_trace, guide_trace = trace_particles(model, guide, num_samples, max_plate_nesting, (data, *args), kwargs)
    log_w = (per_item_sum(model_trace, "model", num_samples, len(data), max_plate_nesting)
             - per_item_sum(guide_trace, "guide", num_samples, len(data), max_plate_nesting))
    if isinstance(log_w, float):
        raise ValueError("the model and guide have no sample sites")
    return log_w


def per_item_sum(trace: poutine.Trace, program: str, num_samples: int, batch: int, max_plate_nesting: int,
                 only: Container[str] | None = None, exclude: Container[str] = ()) -> torch.Tensor | float:
    """The (num_samples, batch) sum of the per-item log-densities (:func:`per_item_log_density`)
    of a trace's sample sites (``only`` those named, none of ``exclude``); 0.0 for none."""
    trace.compute_log_prob()
    total = 0.0
    for name, site in sample_sites(trace):
        if (only is None or name in only) and name not in exclude:
            total = total + per_item_log_density(site, name, program, num_samples, batch, max_plate_nesting)
    return total


def per_item_log_density(site: dict, name: str, program: str, num_samples: int, batch: int,
                         max_plate_nesting: int, full_weight: bool = True,
                         log_prob: torch.Tensor | None = None) -> torch.Tensor:
    """A site's log-density (``log_prob``, by default the site's own) as a (num_samples, batch)
    tensor: summed over the plates inside the data plate; a ValueError naming the site if it is
    not a per-item term. ``full_weight`` refuses a scaled site (log p(x) needs every term at full
    weight; a training objective may take a subsampled plate's scale)."""
    data_dim = -max_plate_nesting
    where = f"{program} site {name!r}"
    plates = [f for f in site["cond_indep_stack"] if f.name != "particles"]
    if not any(f.dim == data_dim and f.size == batch for f in plates):
        found = ", ".join(f"{f.name!r} (dim {f.dim}, size {f.size})" for f in plates) or "none"
        raise ValueError(f"{where} is not in a data plate at dim {data_dim} of size {batch} (its plates: "
                         f"{found}): a global latent, or a program without a data plate, has no per-item "
                         "log-density, so log p(x) cannot be estimated item by item. Put every site "
                         "in the data plate, the outermost plate, and set max_plate_nesting to the "
                         "number of nested plates")
    if full_weight and not (isinstance(site["scale"], (int, float)) and site["scale"] == 1.0):
        raise ValueError(f"{where} is scaled by {site['scale']} (a subsampled plate, or poutine.scale): "
                         "log p(x) needs every term at full weight")
    log_prob = site["log_prob"] if log_prob is None else log_prob
    if log_prob.dim() != max_plate_nesting + 1:
        raise ValueError(f"{where} has a log-density of shape {tuple(log_prob.shape)}, not "
                         f"(samples, batch) plus {max_plate_nesting - 1} inner plate dim(s): "
                         "its batch dims are not all plates (use .to_event for the others)")
    per_item = log_prob.sum(tuple(range(2, log_prob.dim()))) if log_prob.dim() > 2 else log_prob
    if per_item.shape != (num_samples, batch):
        raise ValueError(f"{where} has a per-item log-density of shape {tuple(per_item.shape)}, "
                         f"not (samples, batch) = {(num_samples, batch)}")
    return per_item


class WeightAccumulator:
    """Per-image running sums of log-weights, streamed chunk by chunk in float64."""

    def __init__(self, num_images: int, iwae_k: int, device: torch.device | str = "cpu"):
        zeros = torch.zeros(num_images, dtype=torch.float64, device=device)
        self.iwae_k = iwae_k
        self.count = 0
        self.log_sum_w = zeros - math.inf  # log sum_k w_k
        self.log_sum_w2 = zeros - math.inf  # log sum_k w_k^2
        self.sum_log_w = zeros.clone()  # sum_k log w_k
        self.iwae_sum = zeros.clone()  # sum over complete groups of k of (lse(group) - log k)
        self.iwae_groups = 0
        self._pending = None  # samples not yet forming a complete IWAE group

    def add(self, log_w: torch.Tensor) -> None:
        """Add a (k, num_images) chunk of log-weights."""
        log_w = log_w.double()
        self.count += log_w.shape[0]
        self.log_sum_w = torch.logaddexp(self.log_sum_w, log_w.logsumexp(0))
        self.log_sum_w2 = torch.logaddexp(self.log_sum_w2, (2 * log_w).logsumexp(0))
        self.sum_log_w += log_w.sum(0)
        if self._pending is not None:
            log_w = torch.cat([self._pending, log_w])
        groups = log_w.shape[0] // self.iwae_k
        used = groups * self.iwae_k
        if groups:
            grouped = log_w[:used].reshape(groups, self.iwae_k, -1)
            self.iwae_sum += (grouped.logsumexp(1) - math.log(self.iwae_k)).sum(0)
            self.iwae_groups += groups
        self._pending = log_w[used:] if used < log_w.shape[0] else None

    def result(self) -> dict[str, torch.Tensor]:
        return {
            "log_px": self.log_sum_w - math.log(self.count),
            "elbo": self.sum_log_w / self.count,
            "iwae": self.iwae_sum / self.iwae_groups if self.iwae_groups else self.sum_log_w * math.nan,
            "ess": torch.exp(2 * self.log_sum_w - self.log_sum_w2),
        }


@dataclass
class ChunkPlan:
    images_per_chunk: int
    samples_per_chunk: int


SAMPLE_CHUNK_MULTIPLE = 50  # sample chunks are a multiple of this, where they can be


def plan_chunks(num_samples: int, num_images: int, bytes_per_row: int, max_memory_mb: float,
                batch_size: int) -> ChunkPlan:
    """Largest (images, samples) chunk whose rows fit in ``max_memory_mb``, the sample chunk
    rounded down to a multiple of 50 (as the scores in results/ were drawn). The IWAE grouping
    plays no part (the accumulator carries a group across chunks): it must not change the samples."""
    rows = max(1, int(max_memory_mb * 2**20) // max(1, bytes_per_row))
    images = max(1, min(batch_size, num_images, rows))
    samples = min(num_samples, max(1, rows // images))
    if samples >= SAMPLE_CHUNK_MULTIPLE:
        samples -= samples % SAMPLE_CHUNK_MULTIPLE
    return ChunkPlan(images, samples)


def vae_bytes_per_row(vae) -> int | None:
    """Memory per (image, sample) row of one forward pass of the VAE's decoder and likelihood,
    float32, with the temporaries of the Bernoulli log-density (about 4 x 784 floats). None for
    another model: its rows are measured on a first chunk."""
    if not hasattr(vae, "hidden_dims"):
        return None
    pixels = vae.decoder.logits.out_features
    return 4 * (3 * vae.latent_dim + 2 * sum(vae.hidden_dims) + 4 * pixels)


def measured_bytes_per_row(model: Callable, guide: Callable, data: torch.Tensor, args: tuple, kwargs: dict,
                           max_plate_nesting: int, num_samples: int = 4) -> int:
    """Memory per (item, sample) row, measured on a first small chunk: on CUDA the peak the
    allocator saw, elsewhere the bytes of every tensor the two traces hold (values, log-densities,
    the distributions' parameters), doubled for the temporaries of the log-densities."""
    x = data[:min(len(data), 8)]
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        before = torch.cuda.memory_allocated(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        log_importance_weights(model, guide, x, num_samples, *args, max_plate_nesting=max_plate_nesting, **kwargs)
        used = torch.cuda.max_memory_allocated(x.device) - before
        return max(1, used // (len(x) * num_samples))
    model_trace, guide_trace = trace_particles(model, guide, num_samples, max_plate_nesting, (x, *args), kwargs)
    seen: dict[int, int] = {}
    for trace in (guide_trace, model_trace):
        trace.compute_log_prob()
        for _, site in sample_sites(trace):
            for tensor in _tensors_of(site):
                seen[id(tensor)] = tensor.numel() * tensor.element_size()
    return max(1, 2 * sum(seen.values()) // (len(x) * num_samples))


def _tensors_of(site: dict):
    """The tensors a sample site holds: its value, log-density and its distribution's parameters."""
    yield site["value"]
    yield site["log_prob"]
    fn = site["fn"]
    while fn is not None:
        yield from (v for v in vars(fn).values() if isinstance(v, torch.Tensor))
        fn = getattr(fn, "base_dist", None)


def batch_seed(seed: int, batch_index: int) -> int:
    """The RNG seed of one image batch: a run's figures do not depend on how batches are spread."""
    return derived_seed(seed, batch_index)


@dataclass
class LogLikelihood:
    """Per-item estimates of one :func:`estimate_log_likelihood` call.

    :ivar torch.Tensor log_px: log p^(x) per item (float64), a stochastic lower bound on log p(x).
    :ivar torch.Tensor iwae: the IWAE_k bound per item, from the first k of the same draws.
    :ivar torch.Tensor elbo: the ELBO per item, from the same draws.
    :ivar torch.Tensor ess: the effective sample size of each item's importance weights.
    :ivar int num_samples: K, the draws per item.
    :ivar int iwae_k: k of the IWAE bound.
    """

    log_px: torch.Tensor
    iwae: torch.Tensor
    elbo: torch.Tensor
    ess: torch.Tensor
    num_samples: int
    iwae_k: int

    def summary(self) -> dict[str, float]:
        """Mean and standard error over items of log p^, IWAE_k and ELBO; the ESS's median and
        the fraction of items whose ESS is low (:func:`low_ess_threshold`)."""
        return summarize(self.per_item(), self.num_samples)

    def per_item(self) -> dict[str, torch.Tensor]:
        return {"log_px": self.log_px, "iwae": self.iwae, "elbo": self.elbo, "ess": self.ess}


def estimate_log_likelihood(model: Callable, guide: Callable, data: torch.Tensor, *args,
                            num_samples: int = 5000, max_plate_nesting: int = 1, batch_size: int = 100,
                            max_memory_mb: float = 1024.0, seed: int = 0, iwae_k: int = 50,
                            **kwargs) -> LogLikelihood:
    """Importance-sampled log p(x) of each item of ``data`` under a Pyro model, with the guide as
    proposal: K = ``num_samples`` draws per item, log p^(x) = logsumexp_k log w_k - log K.

    ``data`` is split into batches of at most ``batch_size`` items along dim 0, and each is
    passed as the first argument of ``model`` and ``guide``, ``*args`` and ``**kwargs`` after it.
    Every sample site must lie in the data plate, the outermost plate (dim
    ``-max_plate_nesting``), sized to the batch; the particles live at dim
    ``-(max_plate_nesting + 1)``. Anything else is a ValueError naming the site. The memory a
    chunk of (items x samples) takes is measured on a first small chunk and chunks are sized to
    ``max_memory_mb``. A given ``seed`` gives the same numbers, and the caller's random state is
    left as it was.

    :param callable model: a Pyro model p(x, z) whose observed site takes the item.
    :param callable guide: a Pyro guide q(z|x), the proposal.
    :param torch.Tensor data: the items, along dim 0.
    :param int num_samples: K, importance samples per item.
    :param int max_plate_nesting: the number of plates the programs nest.
    :param int batch_size: the most items per batch.
    :param float max_memory_mb: the memory a chunk of items × samples may take.
    :param int seed: the random seed of the draws.
    :param int iwae_k: k of the IWAE_k bound reported beside log p^(x) (at most K).
    :returns: a :class:`LogLikelihood`.

    Reference: Y. Burda, R. Grosse, R. Salakhutdinov, Importance Weighted Autoencoders, ICLR 2016
    (arXiv:1509.00519), section 5: the same estimator with K = 5,000.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    if max_plate_nesting < 1:
        raise ValueError(f"max_plate_nesting must be at least 1 (the data plate), got {max_plate_nesting}")
    if len(data) == 0:
        raise ValueError("data holds no items")
    per_item = estimate_per_item(model, guide, data, num_samples, args=args, kwargs=kwargs,
                                 max_plate_nesting=max_plate_nesting, batch_size=batch_size,
                                 max_memory_mb=max_memory_mb, seed=seed, iwae_k=iwae_k,
                                 bytes_per_row=None)  # measured on a first chunk
    return LogLikelihood(**per_item, num_samples=num_samples, iwae_k=min(iwae_k, num_samples))


@torch.no_grad()
def estimate_per_item(model: Callable, guide: Callable, images: torch.Tensor, num_samples: int, *,
                      args: tuple = (), kwargs: dict | None = None, max_plate_nesting: int = MAX_PLATE_NESTING,
                      batch_size: int = 100, max_memory_mb: float = 1024.0, seed: int = 0,
                      iwae_k: int = 50, bytes_per_row: int | None = 16_384, progress: bool = False,
                      world: World | None = None) -> dict[str, torch.Tensor]:
    """Per-item log p^(x), ELBO, IWAE_k bound and ESS (float64 tensors of len(images)): the
    engine of :func:`estimate_log_likelihood`, with the chunk size given and across ranks.

    Images go in batches of at most ``batch_size`` (fewer if memory needs it), each seeded by
    ``batch_seed(seed, index)`` inside a forked RNG, so the caller's random stream is untouched
    and a given seed gives the same numbers. With a ``world`` of several ranks, batch i goes to
    rank i mod size and every rank returns the gathered result: the same numbers as one process.
    ``bytes_per_row=None`` measures the memory of a row on a first small chunk.
    """
    world = world or World()
    kwargs = kwargs or {}
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    iwae_k = min(iwae_k, num_samples)
    check_program(model, guide, (images[:batch_size], *args), kwargs, max_plate_nesting,
                  Requirements(vectorized=True, per_item=True, pathwise=False), "the log p(x) estimator")
    if bytes_per_row is None:
        with forked_rng(images.device):
            torch.manual_seed(seed)  # a measurement that draws the same samples every time
            bytes_per_row = measured_bytes_per_row(model, guide, images, args, kwargs, max_plate_nesting)
    plan = plan_chunks(num_samples, len(images), bytes_per_row, max_memory_mb, batch_size)
    parts: list[tuple[int, dict[str, torch.Tensor]]] = []
    starts = list(range(0, len(images), plan.images_per_chunk))
    mine = [(i, b) for i, b in enumerate(starts) if i % world.size == world.rank]
    bar = tqdm(total=sum(min(plan.images_per_chunk, len(images) - b) for _, b in mine) * num_samples,
               unit="sample", unit_scale=True, disable=None if progress else True, desc="log p(x)",
               dynamic_ncols=True)
    validated = False
    with forked_rng(images.device):
        for index, begin in mine:
            torch.manual_seed(batch_seed(seed, index))
            x = images[begin:begin + plan.images_per_chunk]
            acc = WeightAccumulator(len(x), iwae_k, device=x.device)
            for drawn in range(0, num_samples, plan.samples_per_chunk):
                k = min(plan.samples_per_chunk, num_samples - drawn)
                # Pyro's checks (support, shapes) on the first chunk only: on every chunk they
                # scan each (sample, image, pixel) logit for NaN, 10% of the time on the CPU
                with contextlib.nullcontext() if not validated else pyro.validation_enabled(False):
                    acc.add(log_importance_weights(model, guide, x, k, *args,
                                                   max_plate_nesting=max_plate_nesting, **kwargs))
                validated = True
                bar.update(k * len(x))
            parts.append((index, acc.result()))
    bar.close()
    if world.active:
        shipped = [(i, {k: v.cpu() for k, v in r.items()}) for i, r in parts]
        parts = [part for rank_parts in gather_objects(shipped, world) for part in rank_parts]
    parts.sort(key=lambda part: part[0])
    return {name: torch.cat([r[name].to(images.device) for _, r in parts]) for name in parts[0][1]}


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """The mean of per-image values and its standard error, std / sqrt(n) (nan for one image)."""
    n = len(values)
    return values.mean().item(), (values.std().item() / math.sqrt(n)) if n > 1 else math.nan


def low_ess_threshold(num_samples: int) -> float:
    """An image's ESS counts as low below 1% of K, or below 5 where 1% of K is under 5 (an ESS
    is never below 1, so 1% of a small K could never fire)."""
    return max(5.0, 0.01 * num_samples)


def summarize(per_image: dict[str, torch.Tensor], num_samples: int) -> dict[str, float]:
    """Mean and standard error over images, and the ESS warnings."""
    summary: dict[str, float] = {}
    for name in ("log_px", "iwae", "elbo"):
        summary[f"{name}_mean"], summary[f"{name}_stderr"] = mean_and_stderr(per_image[name])
    ess = per_image["ess"]
    summary["ess_median"] = ess.median().item()
    summary["ess_low_threshold"] = low_ess_threshold(num_samples)
    summary["ess_low_fraction"] = (ess < summary["ess_low_threshold"]).double().mean().item()
    return summary
