"""Run by tests/test_distributed.py: a few training steps, alone or under torchrun.

Usage: python ddp_steps.py OUT.pt. The guide's scale is made negligible (log-variance bias -40,
so z == loc in float32) and the KL is analytic (meanfield), so the ELBO's gradient is
deterministic and N ranks at batch B must match one process at batch N x B to float tolerance.
"""

import sys

import pyro
import torch

from pyro_vae import distributed
from pyro_vae.data import Dataset, Split
from pyro_vae.model import VAE
from pyro_vae.objectives import make_elbo
from pyro_vae.trainer import make_step

out = sys.argv[1]
world = distributed.init_world(torch.device("cpu"))
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
if world.is_main:
    torch.save({"initial": initial, "final": {k: v.clone() for k, v in vae.state_dict().items()}}, out)
