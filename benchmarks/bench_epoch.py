"""Time per epoch, with the per-epoch test ELBO: pyro_vae.fit with --compile against a plain-PyTorch
loop (and the eager Pyro step), in one process.

    python benchmarks/bench_epoch.py [--device cpu] [--epochs 6] [--threads 2]
    python benchmarks/bench_epoch.py --device cuda --hidden-dims 200 200 --latent-dim 50 --train-size 60000 \
        [--elbo iwae --particles 50]

The seed net 784-500-20 by default (Burda et al.'s is --hidden-dims 200 200 --latent-dim 50),
batch 100, fused Adam, --train-size training images (50,000) and 10,000 test images of MNIST's
size (Bernoulli(0.13) pixels: the time does not depend on the values). An epoch is the steps
over the training images and the single-sample test ELBO the trainer reports after each
(trainer.estimate_elbo; the plain loop computes the same bound in batches of 1000), with trace
L = --particles or IWAE k = --particles (vectorized). The variants' epochs are interleaved; the
first holds the compilation and is left out; the table gives the median of the others.
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
from common import describe_machine, parse_bench_args, synchronize, write_section  # noqa: E402
from reference_vae import ReferenceVAE, compiled_step  # noqa: E402

import pyro_vae  # noqa: E402
from pyro_vae.model import VAE  # noqa: E402
from pyro_vae.fit import make_step  # noqa: E402
from pyro_vae.trainer import estimate_elbo  # noqa: E402

TARGET = 0.95  # the compiled Pyro epoch against the plain-PyTorch one


class PlainEpochs:
    """The hand-written loop: eager plain-PyTorch steps (or, with ``compiled``, the same step
    compiled as pyro_vae compiles its own), then the test ELBO."""

    def __init__(self, device, net, particles, iwae, compiled=False):
        self.ref = ReferenceVAE(net["latent_dim"], net["hidden_dims"]).to(device)
        self.optimizer = torch.optim.Adam(self.ref.parameters(), lr=1e-3, fused=True)
        self.particles, self.iwae = particles, iwae
        self.compiled = compiled_step(self.ref, self.optimizer, particles, iwae) if compiled else None

    def __call__(self, train, test):
        for batch in train[torch.randperm(len(train), device=train.device)].split(100):
            if self.compiled is not None:
                self.compiled(batch)
                continue
            self.optimizer.zero_grad(set_to_none=True)
            self.ref.loss(batch, self.particles, self.iwae).backward()
            self.optimizer.step()
        with torch.no_grad():
            return -sum(self.ref.loss(chunk).item() for chunk in test.split(1000)) / len(test)


class EagerPyroEpochs:
    """The eager Pyro step fit runs (make_step), 500 times, then the trainer's test ELBO."""

    def __init__(self, device, net, elbo):
        self.vae = VAE(**net, binary_data=True).to(device)
        optimizer = torch.optim.Adam(self.vae.parameters(), lr=1e-3, fused=True)
        self.step = make_step(self.vae, elbo, optimizer)

    def __call__(self, train, test):
        for batch in train[torch.randperm(len(train), device=train.device)].split(100):
            self.step(batch)
        return estimate_elbo(self.vae, test)


class Interleaved(pyro_vae.Callback):
    """Times each epoch of the compiled fit, from its start to the end of its test ELBO; then
    runs one epoch of each other variant, timed alike, so that the machine's drift falls on all."""

    def __init__(self, vae, train, test, device, others):
        self.vae, self.train, self.test, self.device, self.others = vae, train, test, device, others
        self.seconds = {"plain PyTorch": [], "plain PyTorch, compiled": [], "eager Pyro step": [],
                        "pyro_vae.fit --compile": []}

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
    parser.add_argument("--hidden-dims", type=int, nargs="+", default=[500])
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--train-size", type=int, default=50_000)
    parser.add_argument("--elbo", choices=["trace", "iwae"], default="trace")
    parser.add_argument("--particles", type=int, default=1, help="L, or k for iwae (1)")
    args, threads_flag, device = parse_bench_args(parser)
    train = torch.bernoulli(torch.full((args.train_size, 784), 0.13, device=device))
    test = torch.bernoulli(torch.full((10_000, 784), 0.13, device=device))
    pyro.clear_param_store()
    net = {"latent_dim": args.latent_dim, "hidden_dims": tuple(args.hidden_dims)}

    def elbo():
        return pyro_vae.make_elbo(args.elbo, args.particles, vectorize=args.particles > 1)
    iwae = args.elbo == "iwae"
    others = {"plain PyTorch": PlainEpochs(device, net, args.particles, iwae),
              "plain PyTorch, compiled": PlainEpochs(device, net, args.particles, iwae, compiled=True),
              "eager Pyro step": EagerPyroEpochs(device, net, elbo())}
    vae = VAE(**net, binary_data=True).to(device)
    clock = Interleaved(vae, train, test, device, others)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True)
    pyro_vae.fit(vae, train, elbo(), epochs=args.epochs, batch_size=100, optimizer=optimizer, callbacks=[clock],
                 compile=True)
    times = clock.seconds
    medians = {name: statistics.median(seconds[1:]) for name, seconds in times.items()}
    steps = -(-args.train_size // 100)
    lines = [f"| epoch ({steps} steps + test ELBO) | median s/epoch | ratio to plain PyTorch | "
             "ratio to compiled plain PyTorch | first epoch s |", "|---|---:|---:|---:|---:|"]
    for name, seconds in times.items():
        ratio = medians[name] / medians["plain PyTorch"]
        met = "met" if ratio <= TARGET else "missed"
        target = f" (target <= {TARGET}: {met})" if name == "pyro_vae.fit --compile" else ""
        lines.append(f"| {name} | {medians[name]:.2f} | {ratio:.3f}{target} | "
                     f"{medians[name] / medians['plain PyTorch, compiled']:.3f} | {seconds[0]:.2f} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        sizes = "-".join(map(str, [784, *args.hidden_dims, args.latent_dim]))
        objective = f"{args.elbo} {'k' if args.elbo == 'iwae' else 'L'}={args.particles}"
        flags = (f" --hidden-dims {' '.join(map(str, args.hidden_dims))} --latent-dim {args.latent_dim}"
                 f" --train-size {args.train_size} --elbo {args.elbo} --particles {args.particles}")
        command = f"python benchmarks/bench_epoch.py --device {args.device} --epochs {args.epochs}{flags}{threads_flag}"
        body = (f"`{command}`: "
                f"net {sizes}, {objective}, batch 100, fused Adam, {args.train_size:,} training and 10,000 test "
                f"images; the median of epochs 2 to {args.epochs} (the first holds the compilation).\n\n"
                f"Machine: {describe_machine(device)}.\n\n{table}")
        write_section(f"Training epoch ({device.type}, {sizes}, {objective})", body)


if __name__ == "__main__":
    main()
