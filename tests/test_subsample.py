"""Subsampled data plates: every per-item estimator bounds (N/B) sum_{i in batch} bound_i, the
scale outside each item's log-mean-exp, in value and gradient."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from pyro_vae import make_elbo
from tests.test_estimators import DATA, LinearGaussian, float64  # noqa: F401 (float64: autouse fixture)

PER_ITEM = [("iwae", {}), ("renyi", {"alpha": 0.5}), ("stl", {}), ("dreg", {}), ("miwae", {"num_estimates": 2}),
            ("ciwae", {"beta": 0.3}), ("piwae", {"num_estimates": 2})]
FULL_SIZE = 40  # N; the batch is DATA's B = 4 items, so each site is scaled by N / B = 10


class Subsampled(LinearGaussian):
    """LinearGaussian with its data plate a subsample of FULL_SIZE items, or (plain) not."""

    def __init__(self, plain: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.plain = plain

    def plate(self, x):
        if self.plain:
            return pyro.plate("data", x.shape[0])
        return pyro.plate("data", FULL_SIZE, subsample=torch.arange(x.shape[0]))

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with self.plate(x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.decoder["W"].T + self.decoder["b"], self.noise).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with self.plate(x):
            loc = x @ self.encoder["A"].T + self.encoder["c"]
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=self.encoder["L"].tril()))


def loss_and_gradient(program, name, options, seed, particles=3, elbo=None):
    program.zero_grad()
    pyro.set_rng_seed(seed)
    elbo = elbo or make_elbo(name, particles, vectorize=True, **options)
    loss = elbo.differentiable_loss(program.model, program.guide, DATA)
    loss.backward()
    return loss.item(), torch.cat([p.grad.reshape(-1) for p in program.parameters()])


@pytest.mark.parametrize("name,options", PER_ITEM)
def test_a_subsampled_plate_scales_each_items_bound_outside_its_log_mean_exp(name, options):
    subsampled, plain = Subsampled(exact=False), Subsampled(plain=True, exact=False)
    scale = FULL_SIZE / len(DATA)
    for seed in range(3):  # the same draws: the scaled objective is exactly 3 times the batch's
        value, gradient = loss_and_gradient(subsampled, name, options, seed)
        plain_value, plain_gradient = loss_and_gradient(plain, name, options, seed)
        assert math.isclose(value, scale * plain_value, rel_tol=1e-12)
        assert torch.allclose(gradient, scale * plain_gradient, rtol=1e-10, atol=1e-12)


def reference_iwae_gradients(program, draws, particles=3, scale_inside=False):
    """Plain PyTorch, one row per independent draw: the gradient of -(N/B) sum_i log (1/K) sum_k w_ik
    for Subsampled, or of -sum_i log (1/K) sum_k w_ik^(N/B) (the scale inside, as Pyro's RenyiELBO)
    with scale_inside; torch.func maps the gradient over the draws."""
    scale = FULL_SIZE / len(DATA)

    def negative_bound(p, noise):
        L = p["encoder.L"].tril()
        loc = DATA @ p["encoder.A"].T + p["encoder.c"]
        z = loc + noise @ L.T
        log_q = MultivariateNormal(loc, scale_tril=L).log_prob(z)
        mean = z @ p["decoder.W"].T + p["decoder.b"]
        log_w = Normal(0.0, 1.0).log_prob(z).sum(-1) + Normal(mean, program.noise).log_prob(DATA).sum(-1) - log_q
        if scale_inside:
            return -(torch.logsumexp(scale * log_w, 0) - math.log(particles)).sum()
        return -scale * (torch.logsumexp(log_w, 0) - math.log(particles)).sum()

    parameters = {name: p.detach() for name, p in program.named_parameters()}
    generator = torch.Generator().manual_seed(10_000 + scale_inside)
    noise = torch.randn(draws, particles, *DATA.shape[:-1], 2, generator=generator)
    gradients = torch.func.vmap(torch.func.grad(negative_bound), in_dims=(None, 0))(parameters, noise)
    return torch.cat([gradients[name].reshape(draws, -1) for name in parameters], 1)


def z_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|mean(a) - mean(b)| / its standard error, per entry, for two independent sets of draws."""
    stderr = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    varying = stderr > 0  # entries both leave at zero (L's upper triangle) say nothing
    return (a.mean(0) - b.mean(0))[varying].abs() / stderr[varying]


def test_iwae_and_dreg_gradients_on_a_subsampled_plate_match_a_plain_pytorch_reference():
    program = Subsampled(exact=False)
    draws = 1000
    reference = reference_iwae_gradients(program, 10 * draws)  # cheap: their noise adds little
    inside = reference_iwae_gradients(program, 10 * draws, scale_inside=True)
    for name in ("iwae", "dreg"):
        elbo = make_elbo(name, 3, vectorize=True)
        loss_and_gradient(program, name, {}, 0, elbo=elbo)  # checked once, with Pyro's validation
        with pyro.validation_enabled(False):  # then drawn fast: half the time a draw
            ours = torch.stack([loss_and_gradient(program, name, {}, seed, elbo=elbo)[1] for seed in range(draws)])
        assert z_scores(ours, reference).max() < 4.5, name
        # the test sees the other reading, the scale inside the log-mean-exp
        assert z_scores(ours, inside).max() > 6, name
