"""Annealed importance sampling of log p(x): importance sampling at one step, the exact log p(x)
of a linear-Gaussian model as the steps grow, step sizes that adapt, refusals by site name."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import ais_log_likelihood
from pyro_vae.ais import ais_schedule
from pyro_vae.marginal import batch_seed, log_importance_weights, mean_and_stderr
from pyro_vae.seeds import forked_rng
from tests.test_estimators import DATA, LinearGaussian, float64  # noqa: F401 (float64: autouse fixture)


def exact_log_px(program: LinearGaussian) -> torch.Tensor:
    W, b = program.decoder["W"].detach(), program.decoder["b"].detach()
    return dist.MultivariateNormal(b, W @ W.T + program.noise**2 * torch.eye(3)).log_prob(DATA)


def test_one_step_from_the_guide_is_importance_sampling_with_the_same_draws():
    program = LinearGaussian(exact=False)
    result = ais_log_likelihood(program.model, program.guide, DATA, num_chains=8, num_steps=1, seed=3)
    with forked_rng(DATA.device):
        torch.manual_seed(batch_seed(3, 0))  # the first batch's stream, as AIS draws it
        log_w = log_importance_weights(program.model, program.guide, DATA, 8)
    assert torch.allclose(result.log_weights, log_w.double(), rtol=1e-12, atol=0)
    assert torch.allclose(result.log_px, log_w.logsumexp(0) - math.log(8))


@pytest.mark.parametrize("init", ["guide", "prior"])
def test_ais_reaches_the_exact_log_likelihood_of_a_linear_gaussian_model(init):
    """With more intermediate densities the chains' log-weights agree more (their spread falls
    toward 0, where each one is log p(x)), and the estimate is the exact value within its Monte
    Carlo error."""
    program = LinearGaussian(exact=False)
    exact = exact_log_px(program)
    spread = {}
    for steps in (1, 30, 300):
        result = ais_log_likelihood(program.model, program.guide, DATA, num_chains=16, num_steps=steps,
                                    leapfrog_steps=5, init=init, seed=1)
        spread[steps] = result.log_weights.std(0)
    # (from the prior, one chain that starts far out can keep an item's spread up: compare means)
    assert spread[300].mean() < spread[30].mean() and (spread[30] < spread[1]).all(), spread
    error = (result.log_px - exact).abs()
    assert (error < 4 * spread[300] / math.sqrt(16) + 0.01).all(), (error, spread[300])
    # from the prior the chains start far from the posterior: at these settings they spread more
    assert error.mean() < (0.05 if init == "guide" else 0.25), error


def test_step_sizes_adapt_toward_the_target_acceptance():
    program = LinearGaussian(exact=False)
    large = ais_log_likelihood(program.model, program.guide, DATA, num_chains=4, num_steps=60, leapfrog_steps=3,
                               step_size=3.0)
    small = ais_log_likelihood(program.model, program.guide, DATA, num_chains=4, num_steps=60, leapfrog_steps=3,
                               step_size=0.001)
    assert large.step_size.shape == (59, len(DATA))  # T densities after f_0, T - 1 transitions
    assert (large.step_size[-1] < 3.0).all() and (small.step_size[-1] > 0.001).all()
    assert 0.3 < large.summary()["acceptance_mean"] < 0.95 and small.acceptance.min() > 0.9


def test_schedules():
    assert torch.allclose(ais_schedule("linear", 4), torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64))
    sigmoid = ais_schedule("sigmoid", 10)
    assert sigmoid[0] == 0 and sigmoid[-1] == 1 and (sigmoid[1:] > sigmoid[:-1]).all()
    assert sigmoid[1] < 0.1 * 0.5  # denser near both ends than a linear schedule
    assert torch.equal(ais_schedule([0, 0.3, 1], 99), torch.tensor([0, 0.3, 1], dtype=torch.float64))
    with pytest.raises(ValueError, match="increase strictly from 0 to 1"):
        ais_schedule([0, 0.5, 0.4, 1], 3)


def test_refusals_name_the_site():
    program = LinearGaussian(exact=False)

    def positive_guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.LogNormal(torch.zeros(len(x), 2), 1.0).to_event(1))

    with pytest.raises(ValueError, match="latent site 'z' has support"):
        ais_log_likelihood(program.model, positive_guide, DATA, num_chains=2, num_steps=2)

    def global_model(x):
        shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(shift, 1.0).expand([len(x), 3]).to_event(1), obs=x)

    def global_guide(x):
        pyro.sample("shift", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="site 'shift' is not in the data plate"):
        ais_log_likelihood(global_model, global_guide, DATA, num_chains=2, num_steps=2)
    with pytest.raises(ValueError, match="init must be"):
        ais_log_likelihood(program.model, program.guide, DATA, init="posterior")


def test_bdmc_bounds_meet_the_exact_log_likelihood_and_their_gap_shrinks_with_more_steps():
    from pyro_vae import bdmc

    program = LinearGaussian(exact=False)
    data = torch.zeros(16, 3)  # only the shape and count of the items to simulate
    W, b = program.decoder["W"].detach(), program.decoder["b"].detach()
    runs = {(init, steps): bdmc(program.model, program.guide, data, num_items=16, num_chains=8, num_steps=steps,
                                leapfrog_steps=5, init=init, seed=4)
            for init, steps in (("guide", 200), ("prior", 5), ("prior", 200))}
    fine = runs["guide", 200]
    exact = dist.MultivariateNormal(b, W @ W.T + program.noise**2 * torch.eye(3)).log_prob(fine.data)
    assert all(torch.equal(r.data, fine.data) for r in runs.values()) and not torch.equal(fine.data, data)
    for bound in (fine.lower, fine.upper):  # both meet the exact value, within Monte Carlo error
        error, stderr = mean_and_stderr(bound - exact)
        assert abs(error) < 3 * stderr + 0.02, (error, stderr)
    coarse, long = runs["prior", 5], runs["prior", 200]  # from the prior, the gap is wide at 5 steps
    assert coarse.gap > 0.5 and 0 < long.gap < 0.3 * coarse.gap, (coarse.gap, long.gap)
    for result in (coarse, long):  # lower below exact below upper, within Monte Carlo error
        assert mean_and_stderr(result.lower - exact)[0] < 3 * mean_and_stderr(result.lower - exact)[1]
        assert mean_and_stderr(result.upper - exact)[0] > -3 * mean_and_stderr(result.upper - exact)[1]


def test_compiled_transitions_give_the_eager_numbers_and_are_reused_across_calls():
    from pyro_vae import ais

    program = LinearGaussian(exact=False)
    settings = dict(num_chains=4, num_steps=4, leapfrog_steps=2, seed=5)
    eager = ais_log_likelihood(program.model, program.guide, DATA, **settings)
    ais._COMPILED.clear()
    compiled = ais_log_likelihood(program.model, program.guide, DATA, compile=True, **settings)
    assert len(ais._COMPILED) == 1
    assert torch.allclose(compiled.log_weights, eager.log_weights, rtol=0, atol=1e-9)
    assert torch.allclose(compiled.step_size, eager.step_size, rtol=0, atol=1e-9)
    graph = next(iter(ais._COMPILED.values()))[-1]
    with torch.no_grad():
        program.decoder["W"].mul_(1.5)  # an in-place update, as an optimizer's, is seen by the graph
    again = ais_log_likelihood(program.model, program.guide, DATA, compile=True, **settings)
    assert len(ais._COMPILED) == 1 and next(iter(ais._COMPILED.values()))[-1] is graph
    moved = ais_log_likelihood(program.model, program.guide, DATA, **settings)
    assert torch.allclose(again.log_weights, moved.log_weights, rtol=0, atol=1e-9)
    assert not torch.allclose(again.log_weights, eager.log_weights)


def test_an_hmc_transition_leaves_the_posterior_invariant():
    """Chains started at exact posterior draws of a linear-Gaussian model stay distributed as the
    posterior after HMC transitions at β = 1: the same mean and covariance, within Monte Carlo error."""
    from pyro_vae.ais import AISSettings, _Sampler

    program = LinearGaussian(exact=False)
    W, b, s = program.decoder["W"].detach(), program.decoder["b"].detach(), program.noise
    cov = torch.linalg.inv(torch.eye(2) + W.T @ W / s**2)
    mean = (DATA - b) @ W @ cov / s**2  # (items, 2)
    chains = 4000
    start = mean + torch.randn(chains, len(DATA), 2, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    sampler = _Sampler(program.model, program.guide, (), {}, ["z"], chains, AISSettings(leapfrog_steps=5))
    values = [start]
    state = sampler.state(values, DATA)
    step = 1.5 * cov.diagonal().sqrt().min().item()  # large enough that the accept test matters
    eps, beta = torch.full((len(DATA),), step, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    accepted = []
    for _ in range(10):
        values, *state, accept_prob = sampler.transition(values, *state, eps, beta, DATA)
        accepted.append(accept_prob.mean())
    z = values[0]
    assert 0.2 < torch.stack(accepted).mean() < 1.0  # the chains moved
    assert (z - start).abs().mean() > 0.1
    standard_error = cov.diagonal().sqrt() / math.sqrt(chains)
    assert ((z.mean(0) - mean).abs() < 4 * standard_error).all(), (z.mean(0) - mean) / standard_error
    for item in range(len(DATA)):
        sample_cov = torch.cov(z[:, item].T)
        assert torch.allclose(sample_cov, cov, atol=0.1 * cov.abs().max()), (sample_cov, cov)
