"""Data-parallel scaling: 1 against N processes under torchrun, training and log p(x) evaluation.

    python benchmarks/bench_scaling.py [--processes 2] [--train-size 10000]

Training keeps the global batch at 100 (per-rank batch 100 / N) and reports one epoch's
seconds from metrics.csv; evaluation scores the first 1000 test images with K = 200 and reports
the estimator's seconds from its JSON. Each run is a fresh torchrun launch on this machine, with
the cores split evenly between processes (OMP_NUM_THREADS). Needs MNIST (set PYRO_VAE_DATA).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_machine, write_section  # noqa: E402


def launch(processes: int, args: list[str]) -> None:
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(processes), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, args.processes):
            run = Path(tmp) / f"run{n}"
            launch(n, ["-m", "pyro_vae.train", "--epochs", "2", "--train-size", str(args.train_size),
                       "--batch-size", str(100 // n), "--eval-samples", "0", "--no-progress",
                       "--device", "cpu", "--run-dir", str(run)])
            with open(run / "metrics.csv") as f:
                epoch_seconds = float(list(csv.DictReader(f))[-1]["epoch_seconds"])  # 2nd: warm
            launch(n, ["-m", "pyro_vae.evaluate", str(run), "--num-samples", "200", "--limit", "1000",
                       "--no-progress", "--device", "cpu"])
            eval_seconds = json.loads((run / "eval_test_K200_first1000.json").read_text())["seconds"]
            rows.append((n, epoch_seconds, eval_seconds))
    base = rows[0]
    lines = ["| processes | threads each | train epoch (s) | speed-up | IS eval, 1000 images x K=200 (s) | speed-up |",
             "|---:|---:|---:|---:|---:|---:|"]
    for n, train_s, eval_s in rows:
        lines.append(f"| {n} | {max(1, (os.cpu_count() or 1) // n)} | {train_s:.2f} | {base[1] / train_s:.2f} | "
                     f"{eval_s:.2f} | {base[2] / eval_s:.2f} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        body = (f"`python benchmarks/bench_scaling.py --processes {args.processes} --train-size "
                f"{args.train_size}`: seed net, global batch 100, gloo on the CPU.\n\n"
                f"Machine: {describe_machine(torch.device('cpu'))}.\n\n{table}\n\n"
                "The processes share this machine's cores (each gets fewer threads) and add an "
                "all-reduce per step, so this measures the overhead of the data-parallel path, not "
                "a speed-up; one process per GPU is not measured by this script.")
        write_section("Data-parallel scaling (cpu)", body)


if __name__ == "__main__":
    main()
