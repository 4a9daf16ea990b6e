"""A Pyro step traced once and compiled: ``CompiledLoss``, behind ``fit(..., compile=True)`` and
``python -m pyro_vae.train --compile``.

    values = module's parameters (graph inputs, so the optimizer's in-place updates are seen)
    graph  = make_fx(values, x -> (loss, d loss / d values))     # Pyro's Python runs here, once
    step   = torch.compile(graph)                                  # every later step runs only this

``make_fx`` records the aten operations that ``elbo.differentiable_loss(module.model,
module.guide, x)`` and ``torch.autograd.grad`` execute: Pyro's handlers, distribution objects and
plates run once, at tracing, and leave only tensor arithmetic behind, forward and backward. The
random draws are graph operations too, so every call draws afresh from torch's generator, in the
same order as the eager step. Inductor normally swaps them for its own generator; here it keeps
torch's (``fallback_random``), so a compiled step draws the same numbers as an eager one at the
same seed, and a resumed compiled run repeats an uninterrupted one exactly.

The contract, as for Pyro's ``Jit*`` ELBOs: the program's structure (its sample sites, their
shapes, its control flow) must not depend on the data's values or on the random draws; a
program that branches on them is traced along one branch. A batch of another shape (the short
last batch of an epoch) runs eagerly rather than paying a second compilation. Buffers are read
as they were at tracing (a module that updates buffers, e.g. batch norm, needs the eager step).
"""

from __future__ import annotations

from typing import Callable

import pyro
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from .seeds import forked_rng


class _Objective(nn.Module):
    """The ELBO's loss as a module's forward, so that torch.func.functional_call can swap the
    wrapped module's parameters for traced inputs."""

    def __init__(self, module: nn.Module, elbo):
        super().__init__()
        self.module, self.elbo = module, elbo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.elbo.differentiable_loss(self.module.model, self.module.guide, x)


class CompiledLoss:
    """``loss, grads = compiled(x)``: the loss (-ELBO summed over the batch) and its gradients
    with respect to ``module``'s parameters (None for one the loss does not use), from a graph
    traced at the first call and compiled once per batch shape (see the module docstring).

    With ``elbo`` None, ``module(x)`` is the loss itself: a plain PyTorch model is compiled the
    same way (the benchmarks' hand-written reference).

    ``backend`` is torch.compile's ("inductor", the default), or None to run the traced graph
    as it is (no compilation: for checking a trace). On CUDA, ``cuda_graphs`` (default True)
    replays the compiled step as a CUDA graph, so one step costs one launch.
    """

    def __init__(self, module: nn.Module, elbo=None, backend: str | None = "inductor", cuda_graphs: bool = True):
        if elbo is not None and not hasattr(elbo, "differentiable_loss"):
            raise ValueError(f"{type(elbo).__name__} has no differentiable_loss to trace")
        self.objective = module if elbo is None else _Objective(module, elbo)
        self.names = [name for name, _ in self.objective.named_parameters()]
        self.params = [p for _, p in self.objective.named_parameters()]
        # detached views share the parameters' storage: in-place optimizer updates reach the graph
        self.values = [p.detach() for p in self.params]
        self.backend, self.cuda_graphs = backend, cuda_graphs
        self.steps: dict[tuple, Callable] = {}
        self.shape: torch.Size | None = None  # the batch shape traced first: the epoch's full batches

    def accepts(self, x: torch.Tensor) -> bool:
        """Whether ``x`` has the shape of the traced batches (the first seen); others run eagerly."""
        return self.shape is None or x.shape == self.shape

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        key = (tuple(x.shape), x.dtype, x.device)
        step = self.steps.get(key)
        if step is None:
            step = self.steps[key] = self._compile(self.trace(x), x.device)
            self.shape = self.shape or x.shape
        loss, grads = step(self.values, x)
        return loss, list(grads)

    def set_gradients(self, x: torch.Tensor) -> torch.Tensor:
        """The loss, with its gradients set as the parameters' ``.grad`` (what ``loss.backward()``
        leaves after ``optimizer.zero_grad(set_to_none=True)``), ready for the optimizer's step."""
        loss, grads = self(x)
        for param, grad in zip(self.params, grads):
            param.grad = grad
        return loss

    def trace(self, x: torch.Tensor) -> torch.fx.GraphModule:
        """The aten graph of (parameter values, x) -> (loss, gradients). Tracing runs the step
        once for real, inside a forked RNG, so it leaves torch's random stream as it found it."""
        names = self.names
        if isinstance(self.objective, _Objective):
            self._check_program(x)

        def loss_and_grads(values: list[torch.Tensor], x: torch.Tensor):
            loss = torch.func.functional_call(self.objective, dict(zip(names, values)), (x,))
            grads = torch.autograd.grad(loss, values, allow_unused=True)
            return loss.detach(), grads

        with forked_rng(x.device), pyro.validation_enabled(False):
            inputs = [v.clone().requires_grad_() for v in self.values]
            return make_fx(loss_and_grads)(inputs, x)

    def _check_program(self, x: torch.Tensor) -> None:
        """The estimator's program check, eagerly (not into the graph), and a refusal of guide
        sites that need a score-function surrogate: Pyro forms it with host reads."""
        module, elbo = self.objective.module, self.objective.elbo
        if not hasattr(elbo, "program_shape"):
            return
        shape = elbo.program_shape(module.model, module.guide, (x,), {})
        if shape.score_sites:
            raise ValueError(f"guide site {shape.score_sites[0]!r} is not reparameterized: its score-function "
                             "surrogate is not traced for compilation; train it without compile")

    def _compile(self, graph: torch.fx.GraphModule, device: torch.device) -> Callable:
        return compile_graph(graph, device, self.backend, self.cuda_graphs)


def compile_graph(graph: torch.fx.GraphModule, device: torch.device, backend: str | None = "inductor",
                  cuda_graphs: bool = True) -> Callable:
    """A traced graph compiled by torch.compile with torch's own random generator (so its draws
    match the eager code's at the same seed) and, on CUDA, replayed as a CUDA graph; run with
    autograd off, since the graph holds its own backward. ``backend`` None runs it as traced."""
    if backend is None:
        return graph
    # fallback_random: torch's generator, not inductor's, so draws match the eager step's
    options = {"fallback_random": True}
    if device.type == "cuda" and cuda_graphs and backend == "inductor":
        options["triton.cudagraphs"] = True
    compiled = torch.compile(graph, backend=backend, dynamic=False,
                             options=options if backend == "inductor" else None)

    def run(*inputs):
        with torch.no_grad():  # the graph holds its own backward: no autograd around it
            return compiled(*inputs)
    return run


def host_reads(graph: torch.fx.GraphModule) -> list[str]:
    """The nodes of a traced step that would read a device value on the host (``.item()``, a
    data-dependent branch): none, for a step that never waits for the device."""
    reads = {"aten._local_scalar_dense.default", "aten.item.default", "aten.nonzero.default"}
    return [str(n.target) for n in graph.graph.nodes if n.op == "call_function" and str(n.target) in reads]
