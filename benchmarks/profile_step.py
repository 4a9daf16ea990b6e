"""Where a training step's time goes: cProfile of the trainer step and the plain-PyTorch one.

    python benchmarks/profile_step.py [--steps 200] [--threads N]

Seed net 784-500-20, batch 100, trace L=1, fused Adam on both sides. Self time is summed into a
few buckets (torch kernels by kind, Pyro's Python, torch's Python) and printed as ms per step;
cProfile adds its own cost to every Python call, so the Python rows are upper bounds.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import pyro_vae_step, reference_step  # noqa: E402
from common import add_thread_flag, apply_thread_flag  # noqa: E402

BUCKETS = [  # (label, test on (file, function name)), first match wins
    ("autograd backward (C++)", lambda f, n: "run_backward" in n),
    ("linear layers, forward", lambda f, n: "torch._C._nn.linear" in n),
    ("Bernoulli log-density (BCE with logits)", lambda f, n: f == "~" and "binary_cross_entropy_with_logits" in n),
    ("Adam update (fused kernel)", lambda f, n: "_fused_adam_" in n),
    ("other torch kernels (tanh, exp, sums, ...)", lambda f, n: f == "~" and ("torch" in n or "Tensor" in n)),
    ("Python: Pyro (poutine, plates, ELBO, distributions)", lambda f, n: "/pyro/" in f),
    ("Python: torch (nn.Module calls, optimizer, distributions)", lambda f, n: "/torch/" in f),
    ("Python: the step itself and the rest", lambda f, n: True),
]


def profile(step, x: torch.Tensor, steps: int) -> dict[str, float]:
    for _ in range(20):
        step(x)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step(x)
    profiler.disable()
    totals = {label: 0.0 for label, _ in BUCKETS}
    for (file, _, name), (_, _, self_time, _, _) in pstats.Stats(profiler).stats.items():
        label = next(label for label, test in BUCKETS if test(file, f"{file}:{name}" if file != "~" else name))
        totals[label] += 1e3 * self_time / steps
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    add_thread_flag(parser)
    args = parser.parse_args()
    apply_thread_flag(args)
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((100, 784), 0.13))
    ours = profile(pyro_vae_step(torch.device("cpu"), "trace"), x, args.steps)
    reference = profile(reference_step(torch.device("cpu")), x, args.steps)
    print("| where (self time) | trace L=1 ms/step | plain PyTorch ms/step |\n|---|---:|---:|")
    for label, _ in BUCKETS:
        print(f"| {label} | {ours[label]:.2f} | {reference[label]:.2f} |")
    print(f"| total (under cProfile) | {sum(ours.values()):.2f} | {sum(reference.values()):.2f} |")


if __name__ == "__main__":
    main()
