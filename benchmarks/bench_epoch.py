"""Time per epoch, with the per-epoch test ELBO: pyro_vae.fit with --compile against a plain-PyTorch
loop (and the eager Pyro step), in one process.

    python benchmarks/bench_epoch.py [--device cpu] [--epochs 3] [--threads 2]

Seed net 784-500-20, batch 100, fused Adam, 50,000 training and 10,000 test images of MNIST's
size (Bernoulli(0.13) pixels: the time does not depend on the values). An epoch is the 500
steps and the single-sample test ELBO the trainer reports after each (trainer.estimate_elbo;
the plain loop computes the same bound in batches of 1000), trace L = 1. The variants' epochs are
interleaved; the first holds the compilation and is left out; the table gives the median of the
others.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_thread_flag, apply_thread_flag, describe_machine, synchronize, write_section  # noqa: E402
from reference_vae import ReferenceVAE  # noqa: E402

import pyro_vae  # noqa: E402
from pyro_vae.model import VAE  # noqa: E402
from pyro_vae.fit import make_step  # noqa: E402
from pyro_vae.trainer import estimate_elbo  # noqa: E402

TARGET = 0.95  # the compiled Pyro epoch against the plain-PyTorch one


class PlainEpochs:
    """The hand-written loop: 500 eager plain-PyTorch steps, then the test ELBO."""

    def __init__(self, device):
        self.ref = ReferenceVAE().to(device)
        self.optimizer = torch.optim.Adam(self.ref.parameters(), lr=1e-3, fused=True)

    def __call__(self, train, test):
        for batch in train[torch.randperm(len(train), device=train.device)].split(100):
            self.optimizer.zero_grad(set_to_none=True)
            self.ref.loss(batch).backward()
            self.optimizer.step()
        with torch.no_grad():
            return -sum(self.ref.loss(chunk).item() for chunk in test.split(1000)) / len(test)


class EagerPyroEpochs:
    """The eager Pyro step fit runs (make_step), 500 times, then the trainer's test ELBO."""

    def __init__(self, device):
        self.vae = VAE(latent_dim=20, hidden_dims=(500,), binary_data=True).to(device)
        optimizer = torch.optim.Adam(self.vae.parameters(), lr=1e-3, fused=True)
        self.step = make_step(self.vae, pyro_vae.make_elbo("trace"), optimizer)

    def __call__(self, train, test):
        for batch in train[torch.randperm(len(train), device=train.device)].split(100):
            self.step(batch)
        return estimate_elbo(self.vae, test)


class Interleaved(pyro_vae.Callback):
    """Times each epoch of the compiled fit, from its start to the end of its test ELBO; then
    runs one epoch of each other variant, timed alike, so that the machine's drift falls on all."""

    def __init__(self, vae, train, test, device, others):
        self.vae, self.train, self.test, self.device, self.others = vae, train, test, device, others
        self.seconds = {"plain PyTorch": [], "eager Pyro step": [], "pyro_vae.fit --compile": []}

    def on_epoch_start(self, state):
        synchronize(self.device)
        self.started = time.perf_counter()

    def on_epoch_end(self, state, row):
        row["test_elbo"] = estimate_elbo(self.vae, self.test)
        synchronize(self.device)
        self.seconds["pyro_vae.fit --compile"].append(time.perf_counter() - self.started)
        for name, epoch in self.others.items():
            started = time.perf_counter()
            epoch(self.train, self.test)
            synchronize(self.device)
            self.seconds[name].append(time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per variant; the first is left out (6)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    add_thread_flag(parser)
    args = parser.parse_args()
    threads_flag = apply_thread_flag(args)
    device = torch.device(args.device)
    torch.manual_seed(0)
    train = torch.bernoulli(torch.full((50_000, 784), 0.13, device=device))
    test = torch.bernoulli(torch.full((10_000, 784), 0.13, device=device))
    pyro.clear_param_store()
    others = {"plain PyTorch": PlainEpochs(device), "eager Pyro step": EagerPyroEpochs(device)}
    vae = VAE(latent_dim=20, hidden_dims=(500,), binary_data=True).to(device)
    clock = Interleaved(vae, train, test, device, others)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True)
    pyro_vae.fit(vae, train, pyro_vae.make_elbo("trace"), epochs=args.epochs, batch_size=100,
                 optimizer=optimizer, callbacks=[clock], compile=True)
    times = clock.seconds
    medians = {name: statistics.median(seconds[1:]) for name, seconds in times.items()}
    lines = ["| epoch (500 steps + test ELBO) | median s/epoch | ratio to plain PyTorch | first epoch s |",
             "|---|---:|---:|---:|"]
    for name, seconds in times.items():
        ratio = medians[name] / medians["plain PyTorch"]
        target = f" (target <= {TARGET}: {'met' if ratio <= TARGET else 'missed'})" if "compile" in name else ""
        lines.append(f"| {name} | {medians[name]:.2f} | {ratio:.3f}{target} | {seconds[0]:.2f} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        body = (f"`python benchmarks/bench_epoch.py --device {args.device} --epochs {args.epochs}{threads_flag}`: "
                f"seed net 784-500-20, batch 100, fused Adam, 50,000 training and 10,000 test images; the "
                f"median of epochs 2 to {args.epochs} (the first holds the compilation).\n\n"
                f"Machine: {describe_machine(device)}.\n\n{table}")
        write_section(f"Training epoch ({device.type})", body)


if __name__ == "__main__":
    main()
