"""Run by tests/test_distributed.py under torchrun, and imported by it for the one-process
answers: what two ranks compute must equal what one process computes.

Usage: python ranks.py OUT_DIR RUN_DIR. Writes OUT_DIR/steps.pt (a few training steps, each rank
a slice of the global batch) and OUT_DIR/is.json, OUT_DIR/ais.json (the run scored by importance
sampling and by AIS, images dealt to the ranks). One launch for all three: each torchrun start
costs seconds of imports per process.
"""

import sys
from pathlib import Path

import pyro
import torch

from pyro_vae import distributed
from pyro_vae.ais import AISSettings
from pyro_vae.data import Dataset, Split
from pyro_vae.evaluation import evaluate_run
from pyro_vae.evaluation_ais import evaluate_run_ais
from pyro_vae.model import VAE
from pyro_vae.objectives import make_elbo
from pyro_vae.trainer import make_step

IS_SETTINGS = dict(num_samples=20, limit=230, batch_size=40, seed=4, device="cpu", progress=False)
AIS_SETTINGS = AISSettings(num_chains=4, num_steps=3, leapfrog_steps=2, batch_size=8)


def train_steps(world: distributed.World) -> dict:
    """The guide's scale is made negligible (log-variance bias -40, so z == loc in float32) and
    the KL is analytic (meanfield), so the ELBO's gradient is deterministic and N ranks at batch
    B must match one process at batch N x B to float tolerance."""
    g = torch.Generator().manual_seed(0)
    images = torch.bernoulli(torch.rand(4, 784, generator=g)[torch.arange(64) % 4], generator=g)
    data = Dataset("toy", "static", Split(images, None), Split(images[:0], None), Split(images[:8], None), "memory")
    pyro.set_rng_seed(0)
    vae = VAE(latent_dim=3, hidden_dims=(16,), binary_data=True)
    vae.encoder.log_variance.bias.data.fill_(-40.0)
    initial = {k: v.clone() for k, v in vae.state_dict().items()}
    hook = (lambda: distributed.sum_gradients(vae.parameters())) if world.active else None
    step = make_step(vae, make_elbo("meanfield"), torch.optim.Adam(vae.parameters(), lr=1e-3), after_backward=hook)
    batch = 32 // world.size  # the same global batch of 32 whatever the number of ranks
    for epoch in range(2):
        for x in data.train_batches(epoch, batch, seed=1, rank=world.rank, world_size=world.size):
            step(x)
    return {"initial": initial, "final": {k: v.clone() for k, v in vae.state_dict().items()}}


def scores(run: Path, out: Path) -> tuple[dict, dict]:
    """The run's IS and AIS reports, written to out/is.json and out/ais.json."""
    importance = evaluate_run(run, out=str(out / "is.json"), **IS_SETTINGS)
    annealed = evaluate_run_ais(run, AIS_SETTINGS, limit=30, device="cpu", progress=False, out=str(out / "ais.json"))
    return importance, annealed


if __name__ == "__main__":
    out, run = Path(sys.argv[1]), Path(sys.argv[2])
    world = distributed.init_world(torch.device("cpu"))
    steps = train_steps(world)
    if world.is_main:
        torch.save(steps, out / "steps.pt")
    scores(run, out)
