"""STL, DReG, MIWAE, CIWAE and PIWAE against closed forms and against the estimators they refine:
zero-variance guide gradients at the exact posterior, unbiasedness, shared-sample identities."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import make_elbo
from pyro_vae.model import VAE


@pytest.fixture(autouse=True)
def float64():
    """Exact zeros must read as zeros: each test runs in float64, and the default is restored."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


class LinearGaussian(nn.Module):
    """z ~ N(0, I_2), x ~ N(W z + b, s^2 I_3); q(z|x) = N(A x + c, L L^T), a full-covariance
    Gaussian that holds the exact posterior when (A, c, L) take their closed-form values."""

    def __init__(self, exact: bool = True, noise: float = 0.6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.noise = noise
        self.decoder = nn.ParameterDict({"W": nn.Parameter(torch.randn(3, 2, generator=g)),
                                         "b": nn.Parameter(torch.randn(3, generator=g))})
        W, b = self.decoder["W"].detach(), self.decoder["b"].detach()
        post_cov = torch.linalg.inv(torch.eye(2) + W.T @ W / noise**2)
        A = post_cov @ W.T / noise**2
        L = torch.linalg.cholesky(post_cov)
        if not exact:  # a guide that is off: shifted, mis-scaled
            A, L = 0.8 * A, 1.4 * L
        self.encoder = nn.ParameterDict({"A": nn.Parameter(A), "c": nn.Parameter(-A @ b + (0 if exact else 0.3)),
                                         "L": nn.Parameter(L)})

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.decoder["W"].T + self.decoder["b"], self.noise).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc = x @ self.encoder["A"].T + self.encoder["c"]
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=self.encoder["L"].tril()))


DATA = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def gradients(program, name, particles=1, seed=0, x=DATA, **options):
    """(value, encoder gradient, decoder gradient) of one draw of the named estimator."""
    program.zero_grad()
    pyro.set_rng_seed(seed)
    loss = make_elbo(name, particles, vectorize=True, **options).differentiable_loss(program.model, program.guide, x)
    loss.backward()
    flat = {part: torch.cat([p.grad.reshape(-1) for p in getattr(program, part).values()])
            for part in ("encoder", "decoder")}
    return loss.item(), flat["encoder"], flat["decoder"]


@pytest.mark.parametrize("seed", range(5))
def test_stl_and_dreg_guide_gradients_vanish_at_the_exact_posterior_for_every_sample(seed):
    program = LinearGaussian(exact=True)
    for name, particles in (("stl", 1), ("stl", 4), ("dreg", 5)):
        _, encoder, _ = gradients(program, name, particles, seed)
        assert encoder.abs().max() < 1e-10, (name, encoder)
    for name, particles in (("trace", 1), ("iwae", 5)):  # their score terms are zero only on average
        _, encoder, _ = gradients(program, name, particles, seed)
        assert encoder.abs().max() > 1e-3, name


def paired_z_score(program, a, b, draws=120, **options):
    """max over gradient entries of |mean(a - b)| / its standard error, the two estimators on the
    same samples (seeds), over many draws."""
    differences = torch.stack([gradients(program, a[0], a[1], seed, **options)[1]
                               - gradients(program, b[0], b[1], seed, **options)[1] for seed in range(draws)])
    mean, stderr = differences.mean(0), differences.std(0) / math.sqrt(draws)
    varying = stderr > 0  # entries both estimators leave at zero (L's upper triangle) say nothing
    assert (mean[~varying] == 0).all()
    return (mean[varying].abs() / stderr[varying]).max().item()


def test_stl_and_dreg_guide_gradients_are_unbiased_and_the_test_sees_a_biased_one():
    program = LinearGaussian(exact=False)
    assert paired_z_score(program, ("stl", 1), ("trace", 1)) < 4.5
    assert paired_z_score(program, ("dreg", 5), ("iwae", 5)) < 4.5
    # the same test catches an estimator of another gradient: STL's is the ELBO's, not IWAE's
    assert paired_z_score(program, ("stl", 5), ("iwae", 5)) > 8


def test_dreg_lowers_the_guide_gradient_variance_of_iwae():
    program = LinearGaussian(exact=False)
    spread = {name: torch.stack([gradients(program, name, 10, seed)[1] for seed in range(100)]).var(0).sum()
              for name in ("iwae", "dreg")}
    assert spread["dreg"] < 0.5 * spread["iwae"], spread


def test_shared_sample_identities():
    program = LinearGaussian(exact=False)
    iwae = gradients(program, "iwae", 6, seed=3)
    dreg = gradients(program, "dreg", 6, seed=3)
    assert math.isclose(dreg[0], iwae[0], rel_tol=1e-12)  # the same bound
    assert torch.allclose(dreg[2], iwae[2], atol=1e-12)  # the model's gradient is IWAE's own
    assert not torch.allclose(dreg[1], iwae[1], atol=1e-6)  # the guide's is not
    stl, dreg1 = gradients(program, "stl", 1, seed=4), gradients(program, "dreg", 1, seed=4)
    assert all(torch.allclose(torch.as_tensor(a), torch.as_tensor(b), atol=1e-12) for a, b in zip(stl, dreg1))
    trace = gradients(program, "trace", 3, seed=5)
    assert math.isclose(gradients(program, "stl", 3, seed=5)[0], trace[0], rel_tol=1e-12)
    # MIWAE: one estimate is IWAE; estimates of one sample each are the ELBO with M particles
    assert all(torch.allclose(torch.as_tensor(a), torch.as_tensor(b), atol=1e-12)
               for a, b in zip(gradients(program, "miwae", 6, seed=3, num_estimates=1), iwae))
    assert math.isclose(gradients(program, "miwae", 1, seed=5, num_estimates=3)[0], trace[0], rel_tol=1e-12)
    # CIWAE's ends are the ELBO and IWAE
    assert math.isclose(gradients(program, "ciwae", 3, seed=5, beta=1.0)[0], trace[0], rel_tol=1e-12)
    assert math.isclose(gradients(program, "ciwae", 6, seed=3, beta=0.0)[0], iwae[0], rel_tol=1e-12)
    ciwae = gradients(program, "ciwae", 3, seed=5, beta=0.25)[0]
    iwae3 = gradients(program, "iwae", 3, seed=5)[0]
    assert math.isclose(ciwae, 0.25 * trace[0] + 0.75 * iwae3, rel_tol=1e-12)


def test_piwae_trains_the_model_on_iwae_mk_and_the_guide_on_miwae():
    program = LinearGaussian(exact=False)
    piwae = gradients(program, "piwae", 3, seed=7, num_estimates=4)
    iwae12 = gradients(program, "iwae", 12, seed=7)
    miwae = gradients(program, "miwae", 3, seed=7, num_estimates=4)
    assert math.isclose(piwae[0], iwae12[0], rel_tol=1e-12)  # its value: the model's bound
    assert torch.allclose(piwae[2], iwae12[2], atol=1e-12)
    assert torch.allclose(piwae[1], miwae[1], atol=1e-12)
    assert not torch.allclose(miwae[2], iwae12[2], atol=1e-6)  # the two objectives do differ


def test_a_guide_site_without_a_pathwise_gradient_is_refused_by_name():
    vae = VAE(latent_dim=2, hidden_dims=(4,), binary_data=True)
    x = torch.bernoulli(torch.full((3, 784), 0.3))

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(len(x), 2)).to_event(1))

    for name in ("stl", "dreg", "miwae", "ciwae", "piwae"):
        with pytest.raises(ValueError, match="guide site 'z' is not reparameterized"):
            make_elbo(name, 2).differentiable_loss(vae.model, guide, x)


@pytest.mark.parametrize("name,options", [("dreg", {}), ("piwae", {"num_estimates": 2}), ("stl", {})])
def test_the_estimators_train_the_seed_vae_through_svi(name, options):
    torch.set_default_dtype(torch.float32)
    try:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = VAE(latent_dim=2, hidden_dims=(16,), binary_data=True)
        x = torch.bernoulli(torch.rand(1, 784).expand(32, 784).clamp(0.05, 0.95))
        svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), make_elbo(name, 3, **options))
        losses = [svi.step(x) for _ in range(30)]
        assert sum(losses[-10:]) < 0.8 * sum(losses[:10]), (losses[:3], losses[-3:])
    finally:
        torch.set_default_dtype(torch.float64)


def test_the_trainer_drives_them_and_keeps_their_options_across_a_resume(tmp_path, capsys):
    from pyro_vae.cli import train as train_cli
    from pyro_vae.runs import load_checkpoint
    from pyro_vae.trainer import TrainConfig, train
    from tests.conftest import synthetic_dataset
    from tests.conftest import call

    torch.set_default_dtype(torch.float32)
    run = tmp_path / "run"
    config = TrainConfig(run_dir=str(run), epochs=2, batch_size=16, hidden_dims=(8,), latent_dim=2, elbo="piwae",
                         num_particles=2, extra={"num_estimates": 3}, eval_samples=0)
    history = train(config, synthetic_dataset(), progress=False, log=lambda _: None).history
    assert history[1]["train_elbo"] > history[0]["train_elbo"]
    assert load_checkpoint(run / "checkpoint.pt")["config"]["extra"] == {"num_estimates": 3}
    status, err = call(train_cli.main, ["--run-dir", str(run), "--resume", "--num-estimates", "4"], capsys)
    assert status == 2 and "drop --num-estimates" in err, err


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_piwae_gradients_stay_finite_when_an_estimates_weight_underflows(dtype):
    """A sharp likelihood and a broad guide put one of M = 2 estimates thousands of nats below the
    other: its draws' IWAE weights a underflow to 0 and the path ratio b / a overflows. Such draws
    pass no gradient to z (as documented), and nothing becomes NaN (0 × inf did)."""
    torch.set_default_dtype(dtype)
    loc = torch.nn.Parameter(torch.tensor(0.5))

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z, 0.01), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc.to(x.dtype).expand(len(x)), 3.0))
    x = torch.zeros(8)
    for seed in range(5):
        loc.grad = None
        pyro.set_rng_seed(seed)
        loss = make_elbo("piwae", 1, num_estimates=2).differentiable_loss(model, guide, x)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(loc.grad), (seed, loss, loc.grad)


def test_path_weights_refuse_a_backward_before_they_are_set():
    """PIWAE and DReG set the weights between forward and backward; a backward without them is an
    error, not the identity."""
    from pyro_vae.estimators import PathWeights

    path = PathWeights(max_plate_nesting=1)
    z = torch.ones(3, 2, requires_grad=True)
    with pytest.raises(RuntimeError, match="^the path weights were not set before backward$"):
        path.attach(z, event_dim=0).sum().backward()
    path.set(torch.tensor([[1.0, 2.0]] * 3))
    path.attach(z, event_dim=0).sum().backward()
    assert torch.equal(z.grad, torch.tensor([[1.0, 2.0]] * 3))


@pytest.mark.parametrize("name, plated_calls, message", [
    # particles one by one: the check's call, two for the first estimate, the second's first particle
    ("iwae", 4, "^model site 'z' is not in a data plate at dim -1"),
    # particles in one pass: the check's call and the first estimate's
    ("dreg", 2, "^the program has no site in a data plate at dim -1 on this call: its structure changed since "
                "it was checked$"),
    ("miwae", 2, "^the program has no site in a data plate at dim -1 on this call"),
])
def test_a_program_that_leaves_its_data_plate_after_the_check_gets_a_clear_error(name, plated_calls, message):
    """The program is checked on the first call; one whose structure changes later is refused by
    the per-item sums, naming the program and the site, not summed into the wrong items."""
    program, calls = LinearGaussian(), []

    def model(x):
        calls.append(1)
        if len(calls) <= plated_calls:
            return program.model(x)
        pyro.module("decoder", program.decoder)
        z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(2))  # no plate any more
        pyro.sample("x", dist.Normal(z @ program.decoder["W"].T + program.decoder["b"], 0.6).to_event(2), obs=x)

    elbo = make_elbo(name, 2, **({"num_estimates": 2} if name == "miwae" else {}))
    elbo.differentiable_loss(model, program.guide, DATA)
    with pytest.raises(ValueError, match=message):
        elbo.differentiable_loss(model, program.guide, DATA)


@pytest.mark.parametrize("name", ["iwae", "stl", "dreg", "piwae"])
def test_a_guide_that_leaves_its_data_plate_after_the_check_is_named(name):
    program, calls = LinearGaussian(), []

    def guide(x):
        calls.append(1)
        if len(calls) <= 2:  # the check's call and the first estimate's
            return program.guide(x)
        pyro.module("encoder", program.encoder)
        loc = x @ program.encoder["A"].T + program.encoder["c"]
        pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=program.encoder["L"].tril()))  # no plate any more

    elbo = make_elbo(name, 2, vectorize=True, **({"num_estimates": 2} if name == "piwae" else {}))
    elbo.differentiable_loss(program.model, guide, DATA)
    with pytest.raises(ValueError, match="^guide site 'z' is not in a data plate at dim -1 of size 4"):
        elbo.differentiable_loss(program.model, guide, DATA)


@pytest.mark.parametrize("name", ["stl", "dreg", "piwae"])
def test_a_guide_whose_distribution_keeps_its_parameters_in_a_module_is_refused_by_name(name):
    """A normalizing flow's parameters live in its transforms (modules): the estimators that stop
    the guide's parameters (STL, DReG) cannot stop those, and say so instead of leaving them live;
    PIWAE stops only the samples, and takes the flow."""
    flow = dist.transforms.affine_autoregressive(2, hidden_dims=[4])  # a torch module
    program = LinearGaussian()

    def guide(x):
        pyro.module("flow", flow)
        with pyro.plate("data", x.shape[0]):
            base = dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1)
            pyro.sample("z", dist.TransformedDistribution(base, [flow]))

    elbo = make_elbo(name, 2, **({"num_estimates": 2} if name == "piwae" else {}))
    if name == "piwae":
        elbo.differentiable_loss(program.model, guide, DATA).backward()
        assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in flow.parameters())
        return
    with pytest.raises(ValueError, match="^guide site 'z': its distribution TransformedDistribution keeps its "
                                         "parameters in a module, which these estimators cannot stop$"):
        elbo.differentiable_loss(program.model, guide, DATA)


@pytest.mark.parametrize("name, options, particles, bound", [
    ("stl", {}, 6, lambda log_w: log_w.mean(0)),
    ("dreg", {}, 6, lambda log_w: log_w.logsumexp(0) - math.log(6)),
    ("renyi", {"alpha": 0.5}, 6, lambda log_w: 2 * ((0.5 * log_w).logsumexp(0) - math.log(6))),
    ("miwae", {"num_estimates": 2}, 3, lambda log_w: (log_w.reshape(2, 3, -1).logsumexp(1) - math.log(3)).mean(0)),
    ("ciwae", {"beta": 0.3}, 6, lambda log_w: 0.3 * log_w.mean(0) + 0.7 * (log_w.logsumexp(0) - math.log(6))),
    ("piwae", {"num_estimates": 2}, 3, lambda log_w: log_w.logsumexp(0) - math.log(6)),  # the model's IWAE_MK
])
def test_each_bound_is_its_formula_on_the_same_draws(name, options, particles, bound):
    """The value of each loss is minus the sum over items of its bound, computed here from the
    log-weights of the same draws (six per item, M = 2 groups of 3 for MIWAE and PIWAE)."""
    from pyro_vae.marginal import log_importance_weights

    program = LinearGaussian(exact=False)
    pyro.set_rng_seed(4)
    elbo = make_elbo(name, particles, vectorize=True, **options)  # renyi would draw one by one by default
    loss = elbo.differentiable_loss(program.model, program.guide, DATA)
    pyro.set_rng_seed(4)
    log_w = log_importance_weights(program.model, program.guide, DATA, 6)
    assert torch.allclose(-loss, bound(log_w).sum(), rtol=1e-10), name


def test_the_options_defaults_are_those_the_docs_and_commands_state():
    """Read from the classes' signatures by the registry, --help and docs/cli.md: Renyi's alpha 0.5,
    CIWAE's beta 0.5, MIWAE's M 1."""
    assert make_elbo("renyi", 3).alpha == 0.5 and make_elbo("ciwae", 3).beta == 0.5
    assert make_elbo("miwae", 3).num_estimates == 1 and make_elbo("piwae", 3).num_estimates == 1
