"""The importance-sampled log p(x) estimator against exact values."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.ais import ais_log_likelihood
from pyro_vae.marginal import WeightAccumulator, estimate_per_item, plan_chunks, summarize
from pyro_vae.model import VAE
from pyro_vae.objectives import make_elbo


class LinearGaussian:
    """z ~ N(0, I_d), x ~ N(Wz + b, s^2 I_D): p(x) = N(b, W W^T + s^2 I), posterior Gaussian."""

    def __init__(self, latent: int = 2, observed: int = 3, noise: float = 0.5, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(observed, latent, generator=g, dtype=torch.float64)
        self.b = torch.randn(observed, generator=g, dtype=torch.float64)
        self.noise = noise
        precision = torch.eye(latent, dtype=torch.float64) + self.W.T @ self.W / noise**2
        self.post_cov = torch.linalg.inv(precision)
        self.latent = latent

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            zeros = x.new_zeros(self.latent)
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.noise).to_event(1), obs=x)

    def exact_guide(self, x):
        with pyro.plate("data", x.shape[0]):
            loc = (x - self.b) @ self.W @ self.post_cov.T / self.noise**2
            pyro.sample("z", dist.MultivariateNormal(loc, self.post_cov))

    def wrong_guide(self, x):  # the prior: a poor but valid proposal
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(self.latent), 1.0).to_event(1))

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.noise**2 * torch.eye(len(self.b), dtype=torch.float64)
        return dist.MultivariateNormal(self.b, cov).log_prob(x)

    def data(self, n: int, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.latent, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + self.noise * torch.randn(n, len(self.b), generator=g, dtype=torch.float64)


def test_exact_posterior_gives_log_px_from_one_sample():
    lg = LinearGaussian()
    x = lg.data(8)
    result = estimate_per_item(lg.model, lg.exact_guide, x, num_samples=1)
    assert torch.allclose(result["log_px"], lg.exact_log_px(x), atol=1e-9)
    assert result["ess"].sub(1).abs().max() < 1e-9


def test_wrong_guide_is_low_for_small_k_and_converges_as_k_grows():
    lg = LinearGaussian(noise=0.7)
    x = lg.data(40)
    exact = lg.exact_log_px(x)
    gaps = {}
    for k in (1, 10, 3000):
        result = estimate_per_item(lg.model, lg.wrong_guide, x, num_samples=k, seed=3)
        gaps[k] = (result["log_px"] - exact).mean().item()
    assert gaps[1] < -0.5  # E[log p^] < log p(x): biased low
    assert gaps[1] < gaps[10] < gaps[3000]
    assert abs(gaps[3000]) < 0.05


def test_ordering_elbo_iwae_log_px():
    lg = LinearGaussian(noise=0.7)
    x = lg.data(30)
    result = summarize(estimate_per_item(lg.model, lg.wrong_guide, x, 500, iwae_k=10), 500)
    assert result["elbo_mean"] < result["iwae_mean"] < result["log_px_mean"]
    assert result["log_px_mean"] <= lg.exact_log_px(x).mean().item() + 0.01


@pytest.mark.parametrize("memory_mb,batch_size", [(1e-3, 1), (0.05, 3), (1e3, 100)])
def test_chunking_does_not_change_the_result(memory_mb, batch_size):
    # with the exact posterior every weight equals p(x): any chunking must give the same numbers
    lg = LinearGaussian()
    x = lg.data(7)
    plan = plan_chunks(64, 7, 1024, memory_mb, batch_size)
    result = estimate_per_item(lg.model, lg.exact_guide, x, 64, batch_size=batch_size,
                               max_memory_mb=memory_mb, bytes_per_row=1024, iwae_k=8)
    for name in ("log_px", "elbo", "iwae"):
        assert torch.allclose(result[name], lg.exact_log_px(x), atol=1e-9), (name, plan)
    assert torch.allclose(result["ess"], torch.full((7,), 64.0, dtype=torch.float64))


@pytest.mark.parametrize("chunks", [[100], [1, 99], [7, 13, 80], [50, 50], [3] * 33 + [1]])
def test_streamed_sums_equal_the_direct_ones(chunks):
    g = torch.Generator().manual_seed(0)
    log_w = 30 * torch.randn(100, 5, generator=g, dtype=torch.float64) - 200
    acc = WeightAccumulator(5, iwae_k=10)
    begin = 0
    for size in chunks:
        acc.add(log_w[begin:begin + size])
        begin += size
    result = acc.result()
    w_ratio = torch.exp(log_w - log_w.max(0).values)
    assert torch.allclose(result["log_px"], log_w.logsumexp(0) - math.log(100), atol=1e-6)
    assert torch.allclose(result["elbo"], log_w.mean(0), atol=1e-6)
    iwae = (log_w.reshape(10, 10, 5).logsumexp(1) - math.log(10)).mean(0)
    assert torch.allclose(result["iwae"], iwae, atol=1e-6)
    assert torch.allclose(result["ess"], w_ratio.sum(0) ** 2 / (w_ratio**2).sum(0), atol=1e-6)


def test_same_seed_same_numbers_and_caller_rng_untouched():
    lg = LinearGaussian()
    x = lg.data(5)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = estimate_per_item(lg.model, lg.wrong_guide, x, 50, seed=7)
    after = torch.rand(1)
    b = estimate_per_item(lg.model, lg.wrong_guide, x, 50, seed=7)
    c = estimate_per_item(lg.model, lg.wrong_guide, x, 50, seed=8)
    assert torch.equal(a["log_px"], b["log_px"]) and not torch.equal(a["log_px"], c["log_px"])
    assert torch.equal(before, after)


def quadrature_log_px(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log integral N(z; 0, 1) p(x|z) dz on a dense grid (1-D latent), in float64."""
    z = torch.linspace(-8, 8, 40001, dtype=torch.float64)
    dz = (z[1] - z[0]).item()
    decoder = vae.decoder.double()
    with torch.no_grad():
        logits = decoder(z[:, None])  # (G, 784)
        # sum_d x_d l_d - softplus(l_d), as a matmul: no (images, grid, pixels) tensor
        log_lik = x.double() @ logits.T - torch.nn.functional.softplus(logits).sum(-1)
    vae.decoder.float()
    log_prior = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(log_lik + log_prior, dim=1) + math.log(dz)


def briefly_fitted_vae_and_images() -> tuple[VAE, torch.Tensor]:
    """A 1-D-latent Bernoulli VAE with a briefly fitted encoder (a realistic proposal), and six
    of its training images."""
    vae = VAE(latent_dim=1, hidden_dims=(32,), binary_data=True)
    g = torch.Generator().manual_seed(0)
    prototypes = torch.rand(2, 784, generator=g)
    x_train = torch.bernoulli(prototypes[torch.arange(128) % 2], generator=g)
    elbo = make_elbo("trace")
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for _ in range(300):
        optimizer.zero_grad()
        elbo.differentiable_loss(vae.model, vae.guide, x_train).backward()
        optimizer.step()
    return vae, x_train[:6]


def test_bernoulli_vae_matches_quadrature_by_importance_sampling():
    vae, x = briefly_fitted_vae_and_images()
    exact = quadrature_log_px(vae, x)
    result = estimate_per_item(vae.model, vae.guide, x, 5000, seed=0)
    assert abs((result["log_px"] - exact).mean().item()) < 0.05
    assert (result["elbo"] < exact).all()


def test_bernoulli_vae_matches_quadrature_by_ais():
    """AIS meets the same exact values; from the prior, whose mass lies far from this sharp
    posterior, it needs more intermediate densities."""
    vae, x = briefly_fitted_vae_and_images()
    exact = quadrature_log_px(vae, x)
    for init, steps in (("guide", 100), ("prior", 300)):
        ais = ais_log_likelihood(vae.model, vae.guide, x, num_chains=16, num_steps=steps, leapfrog_steps=5,
                                 init=init)
        error, spread = ais.log_px - exact, ais.log_weights.std(0)  # within each item's Monte Carlo error
        assert (error.abs() < 4 * spread / math.sqrt(16) + 0.02).all(), (init, error, spread)
        assert spread.mean() < (0.2 if init == "guide" else 1.0), spread  # and that error is small


def test_pyro_checks_the_first_chunk_only():
    vae = VAE(latent_dim=2, hidden_dims=(8,), binary_data=True)
    with pytest.raises(ValueError):  # grey levels are outside Bernoulli's support
        estimate_per_item(vae.model, vae.guide, torch.full((4, 784), 0.5), 3)
    seen = []
    real_guide = vae.guide

    def guide(x):
        seen.append(pyro.infer.util.is_validation_enabled())
        real_guide(x)
    images = torch.bernoulli(torch.full((4, 784), 0.3))
    estimate_per_item(vae.model, guide, images, 6, batch_size=2, max_memory_mb=1e-9)
    # the program check's one trace, then 4 one-image x 6 one-sample chunks, validated on the first only
    assert seen[0] and seen[1] and not any(seen[2:]) and len(seen) == 25
    assert pyro.infer.util.is_validation_enabled()  # and the caller's setting is back


def test_the_weights_of_a_program_without_per_item_sites_are_refused_naming_the_program_and_site():
    """log_importance_weights on its own (without the estimators' program check): a global site is
    named with the program it is in, and a program without sample sites is refused."""
    from pyro_vae.marginal import log_importance_weights

    x = torch.zeros(3, 2)

    def plated(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))

    def with_global(x):
        pyro.sample("theta", dist.Normal(0.0, 1.0))
        plated(x)

    with pytest.raises(ValueError, match="^model site 'theta' is not in a data plate at dim -1 of size 3 "
                                         "\\(its plates: none\\)"):  # the particles' own plate is not listed
        log_importance_weights(with_global, plated, x, 4)
    with pytest.raises(ValueError, match="^guide site 'theta' is not in a data plate at dim -1 of size 3"):
        log_importance_weights(plated, with_global, x, 4)

    def wrong_size(x):  # a plate at the data's dim, but not over the data
        with pyro.plate("pairs", 2):
            pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0))

    with pytest.raises(ValueError, match="^model site 'z' is not in a data plate at dim -1 of size 3 \\(its plates: "
                                         "'pairs' \\(dim -1, size 2\\)\\)"):
        log_importance_weights(wrong_size, wrong_size, x, 4)
    with pytest.raises(ValueError, match="^the model and guide have no sample sites$"):
        log_importance_weights(lambda x: None, lambda x: None, x, 4)
    assert log_importance_weights(plated, plated, x, 4).shape == (4, 3)


def test_summaries_are_the_mean_and_its_standard_error_of_the_per_image_values():
    from pyro_vae.marginal import mean_and_stderr

    values = torch.tensor([1.0, 2.0, 4.0, 9.0], dtype=torch.float64)
    mean, stderr = mean_and_stderr(values)
    assert mean == 4.0 and math.isclose(stderr, math.sqrt(((values - 4) ** 2).sum().item() / 3) / 2, rel_tol=1e-12)
    one = mean_and_stderr(values[:1])
    assert one[0] == 1.0 and math.isnan(one[1])  # no spread from one image
    assert mean_and_stderr(values[:2]) == (1.5, math.sqrt(0.5) / math.sqrt(2))  # but from two
    per_image = {"log_px": values, "iwae": values - 1, "elbo": values - 2,
                 "ess": torch.tensor([3.0, 60.0, 80.0, 100.0], dtype=torch.float64)}
    summary = summarize(per_image, 5000)
    assert (summary["log_px_mean"], summary["iwae_mean"], summary["elbo_mean"]) == (4.0, 3.0, 2.0)
    assert summary["iwae_stderr"] == summary["log_px_stderr"] == stderr
    assert summary["ess_median"] == 60.0  # torch's median: the lower of the two middle values
    assert summary["ess_low_threshold"] == 50.0 and summary["ess_low_fraction"] == 0.25


def test_fewer_samples_than_one_iwae_group_leave_the_iwae_bound_undefined():
    acc = WeightAccumulator(3, iwae_k=10)
    acc.add(torch.zeros(6, 3))
    result = acc.result()
    assert torch.isnan(result["iwae"]).all() and torch.equal(result["elbo"], torch.zeros(3, dtype=torch.float64))
    acc.add(torch.zeros(4, 3))  # the group completes across chunks
    assert torch.equal(acc.result()["iwae"], torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("arguments, plan", [
    ((5000, 100, 16_384, 1024.0, 100), (100, 650)),  # 65,536 rows: 655 samples, rounded down to 650
    ((5000, 100, 16_384, 1024.0, 20), (20, 3250)),   # a smaller image batch leaves more samples
    ((40, 100, 16_384, 1024.0, 100), (100, 40)),     # K itself when it fits
    ((5000, 3, 1 << 30, 1.0, 100), (1, 1)),          # less than a row: one at a time
    ((5000, 100, 16_384, 0.5, 100), (32, 1)),        # 32 rows
])
def test_chunks_are_the_largest_that_fit_the_memory(arguments, plan):
    chosen = plan_chunks(*arguments)
    assert (chosen.images_per_chunk, chosen.samples_per_chunk) == plan
    assert type(chosen.images_per_chunk) is int and type(chosen.samples_per_chunk) is int  # they size tensors


def test_the_estimate_builds_no_autograd_graph():
    """Scoring 10,000 images at K = 5000 must not keep the decoder's activations for a backward."""
    vae = VAE(latent_dim=2, hidden_dims=(8,), binary_data=True)
    images = torch.bernoulli(torch.full((4, 784), 0.3))
    assert any(p.requires_grad for p in vae.parameters())
    result = estimate_per_item(vae.model, vae.guide, images, 6)
    assert not any(value.requires_grad for value in result.values())


def test_the_vaes_rows_are_sized_from_its_layers():
    """4 bytes for each float of a row: z, its mean and scale (3 J), each hidden layer's output and
    its tanh (2 H), and the logits with the Bernoulli log-density's three temporaries (4 x 784)."""
    from pyro_vae.marginal import vae_bytes_per_row

    assert vae_bytes_per_row(VAE(latent_dim=20, hidden_dims=(500,))) == 4 * (60 + 1000 + 4 * 784)
    assert vae_bytes_per_row(VAE(latent_dim=50, hidden_dims=(200, 200))) == 4 * (150 + 800 + 4 * 784)
    assert vae_bytes_per_row(torch.nn.Linear(2, 2)) is None  # another program: measured instead
