"""Throughput and peak memory of the importance-sampled log p(x) estimator, against a roofline.

    python benchmarks/bench_eval.py [--device cpu] [--images 200] [--samples 1000] [--max-memory-mb 1024]

The roofline is made in the same process from bare torch matmuls of the same shapes on the same
chunks (encoder layers on the chunk's images, decoder layers on its image x sample rows): the
throughput the estimator would have if everything but the matmuls were free. Peak memory is the
growth of the resident set during the estimate (CPU, sampled by a
watcher thread) or torch's peak allocation (CUDA). The table goes to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_thread_flag, apply_thread_flag, describe_machine, synchronize, write_section  # noqa: E402

from pyro_vae.marginal import estimate_per_item, plan_chunks, vae_bytes_per_row  # noqa: E402
from pyro_vae.model import VAE  # noqa: E402


def setup(device, num_images):
    torch.manual_seed(0)
    vae = VAE(latent_dim=20, hidden_dims=(500,), binary_data=True).to(device).eval()
    images = torch.bernoulli(torch.full((num_images, 784), 0.13, device=device))
    return vae, images


def run_estimator(vae, images, samples, max_memory_mb):
    return estimate_per_item(vae.model, vae.guide, images, samples, batch_size=100,
                             max_memory_mb=max_memory_mb, bytes_per_row=vae_bytes_per_row(vae))


def roofline_seconds(device, num_images, samples, max_memory_mb, bytes_per_row, repeats=3):
    plan = plan_chunks(samples, num_images, bytes_per_row, max_memory_mb, 100)
    b, k = plan.images_per_chunk, plan.samples_per_chunk
    rows = b * k
    w = {name: torch.randn(shape, device=device) * 0.01 for name, shape in
         {"e1": (784, 500), "e2": (500, 40), "d1": (20, 500), "d2": (500, 784)}.items()}
    x, h, z, hd = (torch.randn(b, 784, device=device), torch.randn(b, 500, device=device),
                   torch.randn(rows, 20, device=device), torch.randn(rows, 500, device=device))
    chunks = -(-num_images // b) * -(-samples // k)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(chunks):
                torch.mm(x, w["e1"]), torch.mm(h, w["e2"])
                torch.mm(z, w["d1"]), torch.mm(hd, w["d2"])
            synchronize(device)
            best = min(best, time.perf_counter() - start)
    return best, plan


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_memory_mb(device, vae, images, samples, max_memory_mb) -> float:
    """Growth of memory in use while the estimator runs: torch's peak allocation on CUDA; on
    the CPU the resident set, sampled every millisecond by a watcher thread."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run_estimator(vae, images, samples, max_memory_mb)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    base, peak, done = _rss_mb(), [0.0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    run_estimator(vae, images, samples, max_memory_mb)
    done.set()
    watcher.join()
    return max(0.0, peak[0] - base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--max-memory-mb", type=float, default=1024.0)
    parser.add_argument("--no-write", action="store_true")
    add_thread_flag(parser)
    args = parser.parse_args()
    threads_flag = apply_thread_flag(args)
    device = torch.device(args.device)
    vae, images = setup(device, args.images)
    run_estimator(vae, images[:10], 100, args.max_memory_mb)  # warm-up
    ours = float("inf")
    for _ in range(2):
        synchronize(device)
        start = time.perf_counter()
        run_estimator(vae, images, args.samples, args.max_memory_mb)
        synchronize(device)
        ours = min(ours, time.perf_counter() - start)
    roof, plan = roofline_seconds(device, args.images, args.samples, args.max_memory_mb, vae_bytes_per_row(vae))
    peak = peak_memory_mb(device, vae, images, args.samples, args.max_memory_mb)
    work = args.images * args.samples
    ratio = roof / ours
    table = "\n".join([
        "| measure | value |", "|---|---:|",
        f"| estimator throughput (image x samples / s) | {work / ours:,.0f} |",
        f"| matmul roofline, same shapes and chunks (image x samples / s) | {work / roof:,.0f} |",
        f"| ratio to roofline (target >= 0.6) | {ratio:.2f} ({'met' if ratio >= 0.6 else 'missed'}) |",
        f"| chunk: images x samples | {plan.images_per_chunk} x {plan.samples_per_chunk} |",
        f"| peak working memory (MB), flag --max-memory-mb | {peak:.0f} (flag {args.max_memory_mb:.0f}: "
        f"{'within' if peak <= args.max_memory_mb else 'OVER'}) |",
    ])
    print(table)
    if not args.no_write:
        body = (f"`python benchmarks/bench_eval.py --device {args.device} --images {args.images} "
                f"--samples {args.samples} --max-memory-mb {args.max_memory_mb:g}{threads_flag}`: seed net 784-500-20, "
                f"{work:,} image x sample pairs.\n\nMachine: {describe_machine(device)}.\n\n{table}")
        write_section(f"Log-likelihood evaluation ({device.type})", body)


if __name__ == "__main__":
    main()
