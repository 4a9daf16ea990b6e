"""The per-item estimators' training step against IWAE's, compiled, in one process.

    python benchmarks/bench_estimators.py [--device cpu] [--steps 60] [--particles 10 50]

Burda et al.'s net (784-200-200-50, one stochastic layer), batch 100, ``--compile``. DReG, STL
and PIWAE need gradients that IWAE's loss does not give (q at stopped parameters, the path to z
weighted apart from the decoder's); they take them from the same guide and model pass as IWAE,
so a step should cost about what its base estimator's does: IWAE's for DReG and PIWAE, the
ELBO's (trace, L = K) for STL. Each K (total samples per image; PIWAE as M = 2 estimates of
K/2) is timed in interleaved rounds; the table (median ms per step, ratio to the base at the
same K) is printed and written to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    describe_machine, interleaved_step_times, median_ms, parse_bench_args, write_section,
)

from pyro_vae.model import VAE  # noqa: E402
from pyro_vae.objectives import make_elbo  # noqa: E402
from pyro_vae.trainer import TrainConfig, make_optimizer, make_step  # noqa: E402

TARGET = 1.15  # each estimator's step at most this times its base estimator's
BASE = {"dreg": "iwae", "stl": "trace", "piwae M=2": "iwae"}


def estimator_step(device, name: str, samples: int, **options):
    pyro.set_rng_seed(0)
    vae = VAE(latent_dim=50, hidden_dims=(200, 200), binary_data=True).to(device)
    particles = samples // options.get("num_estimates", 1)
    elbo = make_elbo(name, particles, vectorize=True, **options)
    return make_step(vae, elbo, make_optimizer(TrainConfig(), vae.parameters()), compile=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--particles", type=int, nargs="+", default=[10, 50])
    args, threads_flag, device = parse_bench_args(parser)
    x = torch.bernoulli(torch.full((100, 784), 0.13, device=device))

    lines = ["| K | estimator | median ms/step | base | ratio to base | target |", "|---:|---|---:|---|---:|---:|"]
    for samples in args.particles:
        plan = {"iwae": ("iwae", {}), "trace": ("trace", {}), "dreg": ("dreg", {}), "stl": ("stl", {}),
                "piwae M=2": ("piwae", {"num_estimates": 2})}
        steps = {label: estimator_step(device, name, samples, **options) for label, (name, options) in plan.items()}
        variants = {label: (lambda fn=fn: fn(x)) for label, fn in steps.items()}
        scopes = {label: {"params": {}, "constraints": {}} for label in variants}
        for label, run in variants.items():  # the one-off compilation, outside the timing
            with pyro.get_param_store().scope(scopes[label]) if label in scopes else contextlib.nullcontext():
                run()
        times = interleaved_step_times(variants, device, args.steps, param_scopes=scopes)
        medians = {label: median_ms(t) for label, t in times.items()}
        for label in plan:
            base = BASE.get(label)
            if base is None:
                lines.append(f"| {samples} | {label} | {medians[label]:.2f} |  |  |  |")
                continue
            ratio = medians[label] / medians[base]
            verdict = f"<= {TARGET:.2f} ({'met' if ratio <= TARGET else 'missed'})"
            lines.append(f"| {samples} | {label} | {medians[label]:.2f} | {base} | {ratio:.3f} | {verdict} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        body = (f"`python benchmarks/bench_estimators.py --device {args.device} --steps {args.steps} --particles "
                f"{' '.join(map(str, args.particles))}{threads_flag}`: Burda et al.'s net 784-200-200-50, batch "
                f"100, `--compile`, median over rounds of 10 steps, the estimators of one K interleaved in one "
                f"process; K is the samples per image (trace: L = K; piwae: M = 2 estimates of K/2).\n\n"
                f"Machine: {describe_machine(device)}.\n\n{table}")
        write_section(f"Per-item estimators against IWAE ({device.type})", body)


if __name__ == "__main__":
    main()
