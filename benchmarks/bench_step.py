"""Time per training step: pyro_vae's trainer step against plain PyTorch, in one process.

    python benchmarks/bench_step.py [--device cpu] [--steps 200]

Seed net 784-500-20, batch 100. Every variant is timed in interleaved rounds (see common.py);
the table (median ms per step, ratio to the plain-PyTorch step of the same math) is printed and
written to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_thread_flag, apply_thread_flag, describe_machine, interleaved_step_times, median_ms, synchronize,
    write_section,
)
from reference_vae import ReferenceVAE, compiled_step  # noqa: E402

from pyro_vae.model import VAE  # noqa: E402
from pyro_vae.objectives import make_elbo  # noqa: E402
from pyro_vae.trainer import TrainConfig, make_optimizer, make_step  # noqa: E402

TARGETS = {"trace L=1": 1.10, "trace L=10 vectorized": 1.15,
           "trace L=1 --compile": 0.85, "trace L=10 vectorized --compile": 0.90}


def reference_step(device, particles=1, iwae=False):
    ref = ReferenceVAE().to(device)
    # the trainer's optimizer (make_optimizer): Adam, lr 1e-3, eps 1e-8, the fused kernel
    optimizer = torch.optim.Adam(ref.parameters(), lr=1e-3, eps=1e-8, fused=True)

    def step(x):
        optimizer.zero_grad(set_to_none=True)
        loss = ref.loss(x, particles, iwae)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def compiled_reference_step(device, particles=1, iwae=False):
    ref = ReferenceVAE().to(device)
    return compiled_step(ref, torch.optim.Adam(ref.parameters(), lr=1e-3, eps=1e-8, fused=True), particles, iwae)


def pyro_vae_step(device, elbo_name, particles=1, vectorize=False, jit=False, compile=False):
    vae = VAE(latent_dim=20, hidden_dims=(500,), binary_data=True).to(device)
    elbo = make_elbo(elbo_name, particles, vectorize=vectorize, jit=jit)
    return make_step(vae, elbo, make_optimizer(TrainConfig(), vae.parameters()), compile=compile)


def svi_step(device):
    vae = VAE(latent_dim=20, hidden_dims=(500,), binary_data=True).to(device)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=make_elbo("trace"))
    return svi.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    add_thread_flag(parser)
    args = parser.parse_args()
    threads_flag = apply_thread_flag(args)
    import torch._inductor.config

    torch._inductor.config.fx_graph_cache = False  # the compile times below are those of a cold start
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((100, 784), 0.13, device=device))

    # (name, step, name of its plain-PyTorch reference)
    plan = [
        ("plain PyTorch L=1", reference_step(device), None),
        ("trace L=1", pyro_vae_step(device, "trace"), "plain PyTorch L=1"),
        ("plain PyTorch L=1 compiled", compiled_reference_step(device), "plain PyTorch L=1"),
        ("trace L=1 --compile", pyro_vae_step(device, "trace", compile=True), "plain PyTorch L=1"),
        ("Pyro's JitTrace_ELBO L=1", pyro_vae_step(device, "trace", jit=True), "plain PyTorch L=1"),
        ("meanfield L=1", pyro_vae_step(device, "meanfield"), "plain PyTorch L=1"),
        ("stock SVI.step trace L=1", svi_step(device), "plain PyTorch L=1"),
        ("plain PyTorch L=10", reference_step(device, 10), None),
        ("plain PyTorch L=10 compiled", compiled_reference_step(device, 10), "plain PyTorch L=10"),
        ("trace L=10 vectorized", pyro_vae_step(device, "trace", 10, vectorize=True), "plain PyTorch L=10"),
        ("trace L=10 vectorized --compile", pyro_vae_step(device, "trace", 10, vectorize=True, compile=True),
         "plain PyTorch L=10"),
        ("trace L=10 sequential", pyro_vae_step(device, "trace", 10), "plain PyTorch L=10"),
        ("plain PyTorch IWAE K=10", reference_step(device, 10, iwae=True), None),
        ("iwae K=10 vectorized", pyro_vae_step(device, "iwae", 10, vectorize=True), "plain PyTorch IWAE K=10"),
        ("iwae K=10 vectorized --compile", pyro_vae_step(device, "iwae", 10, vectorize=True, compile=True),
         "plain PyTorch IWAE K=10"),
        ("dreg K=10 --compile", pyro_vae_step(device, "dreg", 10, compile=True), "plain PyTorch IWAE K=10"),
    ]
    variants = {name: (lambda fn=fn: fn(x)) for name, fn, _ in plan}
    scopes = {name: {"params": {}, "constraints": {}} for name, _, ref in plan if ref}
    compile_seconds = {}
    for name in [name for name in variants if "compile" in name]:  # paid once per run: timed apart
        with pyro.get_param_store().scope(scopes.get(name)) if name in scopes else contextlib.nullcontext():
            started = time.perf_counter()
            variants[name]()
            synchronize(device)
            compile_seconds[name] = time.perf_counter() - started
    times = interleaved_step_times(variants, device, args.steps, param_scopes=scopes)
    medians = {name: median_ms(t) for name, t in times.items()}

    lines = ["| step | median ms/step | ratio to plain PyTorch | target |", "|---|---:|---:|---:|"]
    for name, _, ref in plan:
        ratio = medians[name] / medians[ref] if ref else 1.0
        target = TARGETS.get(name)
        verdict = "" if target is None else f"<= {target:.2f} ({'met' if ratio <= target else 'missed'})"
        lines.append(f"| {name} | {medians[name]:.2f} | {ratio:.3f} | {verdict} |")
    table = "\n".join(lines)
    table += "\n\nCompilation (once per run, at the first step, no compilation cache): " + ", ".join(
        f"{name} {seconds:.0f} s" for name, seconds in compile_seconds.items()) + "."
    print(table)
    if not args.no_write:
        body = (f"`python benchmarks/bench_step.py --device {args.device} --steps {args.steps}{threads_flag}`: "
                f"seed net 784-500-20, batch 100, fused Adam (stock SVI: pyro.optim.Adam), median over "
                f"{len(times['trace L=1'])} "
                f"rounds of 10 steps each, all variants interleaved in one process.\n\n"
                f"Machine: {describe_machine(device)}.\n\n{table}")
        write_section(f"Training step ({device.type})", body)


if __name__ == "__main__":
    main()
