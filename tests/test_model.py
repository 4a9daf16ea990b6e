"""The probabilistic program: trace structure, and the ELBO estimators against a closed form."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
from pyro.poutine.util import site_is_subsample
import pytest
import torch
import torch.nn.functional as F

from pyro_vae.model import VAE, BernoulliPixels
from pyro_vae.objectives import make_elbo
from pyro_vae.trainer import TrainConfig, make_optimizer, make_step


def test_traces_have_the_expected_sites_and_shapes():
    vae = VAE(latent_dim=3, hidden_dims=(16,), binary_data=True)
    x = torch.bernoulli(torch.full((5, 784), 0.3))
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    assert [n for n, s in guide_trace.nodes.items()
            if s["type"] == "sample" and not site_is_subsample(s)] == ["z"]
    assert guide_trace.nodes["z"]["value"].shape == (5, 3)
    assert model_trace.nodes["x"]["is_observed"]
    assert model_trace.nodes["x"]["fn"].event_shape == (784,)
    assert model_trace.nodes["z"]["fn"].event_shape == (3,)
    assert torch.equal(model_trace.nodes["z"]["value"], guide_trace.nodes["z"]["value"])
    model_trace.compute_log_prob()
    assert model_trace.nodes["x"]["log_prob"].shape == (5,)
    # params registered through pyro.module
    assert any(n.startswith("decoder$$$") for n, s in model_trace.nodes.items() if s["type"] == "param")


def test_encoder_and_decoder_are_public_callables():
    vae = VAE(latent_dim=4, hidden_dims=(32, 16))
    loc, scale = vae.encoder(torch.rand(7, 784))
    assert loc.shape == scale.shape == (7, 4) and (scale > 0).all()
    assert vae.decoder(torch.randn(2, 7, 4)).shape == (2, 7, 784)
    assert [m.out_features for m in vae.decoder.hidden if hasattr(m, "out_features")] == [16, 32]


def test_vectorized_particles_run_under_an_outer_plate():
    """L = 4 particles in one pass: the loss is minus the mean over particles of the summed
    per-image log-weights that the log p(x) estimator draws under its own particles plate."""
    from pyro_vae.marginal import log_importance_weights

    vae = VAE(latent_dim=2, hidden_dims=(8,))
    x = torch.rand(6, 784)
    pyro.set_rng_seed(1)
    loss = make_elbo("trace", 4, vectorize=True).differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    log_w = log_importance_weights(vae.model, vae.guide, x, 4)  # the same draws: the same plate dim
    assert loss.shape == () and torch.allclose(loss, -log_w.mean(0).sum(), rtol=1e-6)


def closed_form_elbo(vae: VAE, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """ELBO per image, computed independently of Pyro: analytic KL and a many-sample
    reconstruction term with the reparameterization written out by hand."""
    loc, scale = vae.encoder(x)
    kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * torch.log(scale)).sum(-1)
    total = torch.zeros(len(x), dtype=torch.float64)
    for chunk in [20_000] * (num_samples // 20_000) + [num_samples % 20_000]:
        z = loc + scale * torch.randn(chunk, *loc.shape)
        log_lik = -F.binary_cross_entropy_with_logits(vae.decoder(z), x.expand(chunk, -1, -1),
                                                      reduction="none").sum(-1)
        total += log_lik.double().sum(0)
    return (total / num_samples).float() - kl


@torch.no_grad()
def test_trace_and_meanfield_estimate_the_closed_form_elbo():
    vae = VAE(latent_dim=3, hidden_dims=(32,), binary_data=True)
    vae.encoder.loc.bias.fill_(1.0)  # q away from the prior: a KL of several nats
    x = torch.bernoulli(torch.full((4, 784), 0.2))
    exact = closed_form_elbo(vae, x, 60_000).sum().item()  # its own error: about 0.06 nats
    for name in ("trace", "meanfield"):
        elbo = make_elbo(name, num_particles=500, vectorize=True)
        estimates = torch.tensor([-elbo.loss(vae.model, vae.guide, x) for _ in range(20)])
        stderr = estimates.std().item() / math.sqrt(len(estimates))
        assert abs(estimates.mean().item() - exact) < 4 * stderr + 0.05, (name, estimates.mean(), exact)
    # and the check can fail: a wrong closed form (KL dropped) is far away
    loc, scale = vae.encoder(x)
    kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * torch.log(scale)).sum()
    assert kl > 10 * stderr


def test_a_few_steps_lower_the_loss():
    pyro.set_rng_seed(1)
    vae = VAE(latent_dim=2, hidden_dims=(32,), binary_data=True)
    x = torch.bernoulli(torch.rand(1, 784)).expand(50, -1)
    optimizer = make_optimizer(TrainConfig(lr=1e-2), vae.parameters())
    step = make_step(vae, make_elbo("trace"), optimizer)
    losses = [step(x).item() for _ in range(60)]
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])


def test_bernoulli_pixels_equals_bernoulli_to_event_in_value_and_gradient():
    logits = torch.randn(3, 5, 784, requires_grad=True)
    x = torch.bernoulli(torch.full((5, 784), 0.3))  # broadcast over the leading (particle) dim
    ours = BernoulliPixels(logits).log_prob(x)
    torch_version = dist.Bernoulli(logits=logits).to_event(1).log_prob(x)
    assert ours.shape == (3, 5) and torch.equal(ours, torch_version)
    (ours_grad,) = torch.autograd.grad(ours.sum(), logits)
    (torch_grad,) = torch.autograd.grad(torch_version.sum(), logits)
    assert torch.equal(ours_grad, torch_grad)
    expanded = BernoulliPixels(torch.randn(5, 784)).expand((3, 5))
    assert expanded.batch_shape == (3, 5) and expanded.event_shape == (784,)
    with pytest.raises(ValueError):  # grey levels are refused unless validation is off
        BernoulliPixels(torch.zeros(784), validate_args=True).log_prob(torch.full((784,), 0.5))
    assert torch.isfinite(BernoulliPixels(torch.zeros(784), validate_args=False).log_prob(torch.full((784,), 0.5)))


def test_a_registered_model_is_built_from_a_run_config_and_offered_by_train():
    from pyro_vae.cli.train import build_parser
    from pyro_vae.model import MODELS, ModelRecord, build_model, register_model

    record = ModelRecord("narrow", lambda c: VAE(c["latent_dim"], (8,), binary_data=True), "a narrow VAE",
                         lambda c: "narrow", sizes=(3, (8,)))
    register_model(record)
    try:
        vae = build_model({"model": "narrow", "latent_dim": 3, "hidden_dims": (8,), "binarize": "dynamic"})
        assert vae.hidden_dims == (8,) and vae.latent_dim == 3
        assert build_parser().parse_args(["--model", "narrow"]).model == "narrow"
        with pytest.raises(ValueError, match="already registered"):
            register_model(record)
    finally:
        del MODELS["narrow"]
    with pytest.raises(ValueError, match="unknown model 'narrow'"):
        build_model({"model": "narrow"})
    assert isinstance(build_model({"latent_dim": 2, "hidden_dims": (4,), "binarize": "none"}), VAE)  # older runs
