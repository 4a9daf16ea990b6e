"""AIS of log p(x) against a straightforward eager PyTorch AIS loop, in one process.

    python benchmarks/bench_ais.py [--device cpu] [--images 100] [--steps 20] [--rounds 3]

Burda et al.'s net (the committed IWAE k = 5 model of results/, 784-200-200-50), ``--images``
test images, 16 chains, 10 leapfrog steps, AIS from the prior on a sigmoid schedule of
``--steps`` intermediate densities. The reference is the loop public AIS code writes (e.g. the
BDMC code of Wu et al.): at each transition the decoder runs once for the weight update, once
forward and backward at the start of the trajectory and at every leapfrog step, and twice more
for the accept test. pyro_vae's ``ais_log_likelihood`` evaluates each density and gradient once
per leapfrog step and reuses them for the accept test and the next weight, but runs an eighth
more chains (at least 2) as pilots for the step sizes. Runs are interleaved in rounds; the table (median
seconds per run, ratio to the reference, ms per leapfrog step against one bare decoder forward
and backward of the counted chains' batch) is printed and written to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_machine, parse_bench_args, synchronize, write_section  # noqa: E402

from pyro_vae import ais_log_likelihood, runs  # noqa: E402
from pyro_vae.ais import AISSettings, ais_schedule  # noqa: E402
from pyro_vae.marginal import mean_and_stderr  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "results" / "paper-iwae-k5-7000ep-equal600-ema0.9999"
CHAINS, LEAPFROG = 16, 10
PILOTS = AISSettings(num_chains=CHAINS).pilot_chains
TARGETS = {"pyro_vae eager": 0.85, "pyro_vae --compile": 0.6}


def reference_ais(decoder, x: torch.Tensor, betas: torch.Tensor, latent_dim: int, step_size: float = 0.1,
                  target_accept: float = 0.65) -> torch.Tensor:
    """log p^(x) per image by AIS from the prior, written as public code writes it: plain
    tensors, the decoder re-run wherever a density is needed, step sizes adapted per image from
    its chains' acceptance."""
    def log_lik(z):
        return -F.binary_cross_entropy_with_logits(decoder(z), x.expand(len(z), -1, -1), reduction="none").sum(-1)

    def energy(z, beta):  # -log f_β = -(log p(z) + β log p(x|z))
        return 0.5 * (z ** 2).sum(-1) - beta * log_lik(z)

    def grad_energy(z, beta):
        z = z.detach().requires_grad_()
        return torch.autograd.grad(energy(z, beta).sum(), z)[0]

    z = torch.randn(CHAINS, len(x), latent_dim, device=x.device)
    log_w = torch.zeros(CHAINS, len(x), dtype=torch.float64, device=x.device)
    eps = torch.full((1, len(x), 1), step_size, device=x.device)
    for t in range(1, len(betas)):
        with torch.no_grad():
            log_w += (betas[t] - betas[t - 1]).item() * log_lik(z).double()
        if t == len(betas) - 1:
            break
        beta = betas[t].item()
        r = torch.randn_like(z)
        position, momentum = z, r - 0.5 * eps * grad_energy(z, beta)
        for step in range(LEAPFROG):
            position = position + eps * momentum
            factor = 0.5 if step == LEAPFROG - 1 else 1.0
            momentum = momentum - factor * eps * grad_energy(position, beta)
        with torch.no_grad():
            start_h = energy(z, beta) + 0.5 * (r ** 2).sum(-1)
            end_h = energy(position, beta) + 0.5 * (momentum ** 2).sum(-1)
            accept_prob = torch.exp(start_h - end_h).clamp(max=1.0).nan_to_num(0.0)
            accept = torch.rand_like(accept_prob) < accept_prob
            z = torch.where(accept.unsqueeze(-1), position, z)
            eps = eps * torch.exp(0.1 * (accept_prob.mean(0) - target_accept)).reshape(1, -1, 1)
    return log_w.logsumexp(0) - math.log(CHAINS)


def bare_decoder_ms(decoder, x: torch.Tensor, latent_dim: int, device: torch.device, repeats: int = 30) -> float:
    """One forward and backward (to z) of the decoder and Bernoulli log-density on the counted
    chains' batch: the floor a leapfrog step's cost is measured against."""
    z = torch.randn(CHAINS, len(x), latent_dim, device=device)
    times = []
    for _ in range(repeats + 5):
        synchronize(device)
        start = time.perf_counter()
        zz = z.detach().requires_grad_()
        lp = -F.binary_cross_entropy_with_logits(decoder(zz), x.expand(CHAINS, -1, -1), reduction="none").sum(-1)
        torch.autograd.grad(lp.sum(), zz)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[5:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20, help="intermediate densities T")
    parser.add_argument("--rounds", type=int, default=3)
    args, threads_flag, device = parse_bench_args(parser)
    vae, config, dataset = runs.load_run_and_data(MODEL, device)
    x = dataset.split("test").images[:args.images].to(device)
    latent_dim = config["latent_dim"]
    betas = ais_schedule("sigmoid", args.steps)

    def ours(compile):
        return lambda: ais_log_likelihood(vae.model, vae.guide, x, num_chains=CHAINS, num_steps=args.steps,
                                          leapfrog_steps=LEAPFROG, init="prior", batch_size=len(x),
                                          compile=compile).log_px
    variants = {"reference eager loop": lambda: reference_ais(vae.decoder, x, betas, latent_dim),
                "pyro_vae eager": ours(False), "pyro_vae --compile": ours(True)}
    variants["pyro_vae --compile"]()  # the one-off compilation, outside the timing
    seconds = {name: [] for name in variants}
    estimates = {}
    for round_ in range(args.rounds):
        for name, run in variants.items():
            torch.manual_seed(round_)
            synchronize(device)
            start = time.perf_counter()
            estimates[name] = run()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    bare = bare_decoder_ms(vae.decoder, x, latent_dim, device)
    reference = statistics.median(seconds["reference eager loop"])
    lines = ["| AIS run | median s/run | ratio to reference | target | ms per leapfrog step | ratio to bare "
             "decoder fwd+bwd | log p^(x) (last round) | minus reference |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in variants:
        median = statistics.median(seconds[name])
        per_leapfrog = 1e3 * median / ((args.steps - 1) * LEAPFROG)
        target = f"<= {TARGETS[name]:.2f} ({'met' if median / reference <= TARGETS[name] else 'missed'})" \
            if name in TARGETS else ""
        mean, _ = mean_and_stderr(estimates[name])
        diff, diff_err = mean_and_stderr(estimates[name] - estimates["reference eager loop"])
        lines.append(f"| {name} | {median:.2f} | {median / reference:.3f} | {target} | {per_leapfrog:.1f} | "
                     f"{per_leapfrog / bare:.2f} | {mean:.2f} | {diff:+.2f} ± {diff_err:.2f} |")
    table = "\n".join(lines) + f"\n\nOne bare decoder forward and backward ({CHAINS} x {len(x)} rows): {bare:.1f} ms."
    print(table)
    if not args.no_write:
        body = (f"`python benchmarks/bench_ais.py --device {args.device} --images {args.images} --steps {args.steps} "
                f"--rounds {args.rounds}{threads_flag}`: the committed IWAE (k = 5) model, {len(x)} test images, "
                f"{CHAINS} chains, {LEAPFROG} leapfrog steps, AIS from the prior over {args.steps} densities, "
                f"the three runs interleaved in {args.rounds} rounds in one process. The reference loop runs the "
                f"decoder {LEAPFROG + 1} times forward and backward and 3 times forward per transition; pyro_vae "
                f"{LEAPFROG} times forward and backward, on {CHAINS} counted and {PILOTS} pilot chains. "
                f"Per leapfrog step: the run's time over its {args.steps - 1} transitions x {LEAPFROG} steps (the "
                f"reference's includes its extra evaluations). The estimates differ by their Monte Carlo error "
                f"(independent draws).\n\nMachine: {describe_machine(device)}.\n\n{table}")
        write_section(f"AIS of log p(x) ({device.type})", body)


if __name__ == "__main__":
    main()
