"""The public API on Pyro programs written outside the package: log p(x) of any model/guide whose
sites lie in a data plate, checked against exact marginals; programs it cannot score refused."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_vae
from pyro_vae import LogLikelihood, estimate_log_likelihood


class PPCA:
    """Probabilistic PCA: z ~ N(0, I_2), x ~ N(W z + b, s^2 I_5), so p(x) = N(b, W W^T + s^2 I)."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(5, 2, generator=g, dtype=torch.float64)
        self.b = torch.randn(5, generator=g, dtype=torch.float64)
        self.noise = 0.7
        cov = torch.eye(2, dtype=torch.float64) + self.W.T @ self.W / self.noise**2
        self.post_cov = torch.linalg.inv(cov)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.noise).to_event(1), obs=x)

    def guide(self, x, widen: float = 1.3, shift: float = 0.2):
        """The exact posterior's mean (shifted) with a diagonal, widened scale: imperfect, but it
        covers the posterior, so the estimate converges."""
        with pyro.plate("data", x.shape[0]):
            loc = (x - self.b) @ self.W @ self.post_cov.T / self.noise**2 + shift
            scale = widen * self.post_cov.diagonal().sqrt()
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.noise**2 * torch.eye(5, dtype=torch.float64)
        return dist.MultivariateNormal(self.b, cov).log_prob(x)

    def data(self, n: int):
        g = torch.Generator().manual_seed(1)
        z = torch.randn(n, 2, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + self.noise * torch.randn(n, 5, generator=g, dtype=torch.float64)


def test_ppca_log_px_is_exact_at_large_k_and_clearly_low_at_k1():
    ppca = PPCA()
    x = ppca.data(40)
    exact = ppca.exact_log_px(x)
    result = estimate_log_likelihood(ppca.model, ppca.guide, x, num_samples=10_000, batch_size=16)
    assert isinstance(result, LogLikelihood) and result.log_px.dtype == torch.float64
    assert result.log_px.shape == result.iwae.shape == result.elbo.shape == result.ess.shape == (40,)
    assert abs((result.log_px - exact).mean().item()) < 0.02
    one = estimate_log_likelihood(ppca.model, ppca.guide, x, num_samples=1)
    assert (one.log_px - exact).mean().item() < -0.1  # the ELBO's gap, far outside 0.02
    summary = result.summary()
    assert summary["elbo_mean"] < summary["iwae_mean"] < summary["log_px_mean"]
    assert math.isclose(summary["log_px_mean"], result.log_px.mean().item())


def test_arguments_after_the_data_reach_model_and_guide():
    ppca = PPCA()
    x = ppca.data(10)
    exact = ppca.exact_log_px(x)

    # widen=1, shift=0 makes the guide the exact posterior's marginals: one sample is nearly exact
    def model(x, widen, shift):  # both programs get the same arguments
        ppca.model(x)

    tight = estimate_log_likelihood(model, ppca.guide, x, 1.0, num_samples=200, shift=0.0)
    loose = estimate_log_likelihood(model, ppca.guide, x, 3.0, num_samples=200, shift=1.0)
    assert (tight.elbo - exact).abs().mean() < (loose.elbo - exact).abs().mean()


def test_nested_plates_inside_the_data_plate():
    """x_ij ~ N(z_i, 1) for j in a plate of 3 inside the data plate: p(x_i) is Gaussian."""
    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(x.new_zeros(1, 1), 1.0))
            with pyro.plate("repeats", 3, dim=-1):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            # the exact posterior: N(sum_j x_ij / 4, 1/4)
            pyro.sample("z", dist.Normal(x.sum(-1, keepdim=True) / 4, 0.5))

    x = torch.randn(6, 3, dtype=torch.float64)
    cov = torch.eye(3, dtype=torch.float64) + 1.0
    exact = dist.MultivariateNormal(torch.zeros(3, dtype=torch.float64), cov).log_prob(x)
    result = estimate_log_likelihood(model, guide, x, num_samples=3, max_plate_nesting=2)
    assert torch.allclose(result.log_px, exact, atol=1e-9)  # exact posterior: every weight is p(x)


def test_a_global_latent_outside_the_data_plate_is_refused_by_name():
    def model(x):
        shift = pyro.sample("shift", dist.Normal(torch.zeros(()), 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(shift, 1.0), obs=x)

    def guide(x):
        pyro.sample("shift", dist.Normal(torch.zeros(()), 1.0))

    with pytest.raises(ValueError, match="site 'shift' is not in the data plate 'data'"):
        estimate_log_likelihood(model, guide, torch.randn(8), num_samples=5)


def test_a_program_without_a_data_plate_is_refused():
    """PPCA written with to_event(2) over the whole batch: one joint density, not one per item."""
    ppca = PPCA()

    def model(x):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(2))
        pyro.sample("x", dist.Normal(z @ ppca.W.T + ppca.b, ppca.noise).to_event(2), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(2))

    with pytest.raises(ValueError, match="site 'z' is not in a data plate"):
        estimate_log_likelihood(model, guide, ppca.data(8), num_samples=5)


def test_a_subsampled_plate_is_refused():
    def model(x):
        with pyro.plate("data", 100, subsample_size=x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", 100, subsample_size=x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(()), 1.0))

    with pytest.raises(ValueError, match="site 'z' is scaled by 12.5 .a subsampled plate"):
        estimate_log_likelihood(model, guide, torch.randn(8), num_samples=5)


def test_bad_arguments_are_python_errors():
    ppca = PPCA()
    with pytest.raises(ValueError, match="^num_samples must be a positive integer, got 0$"):
        estimate_log_likelihood(ppca.model, ppca.guide, ppca.data(3), num_samples=0)
    with pytest.raises(ValueError, match="^max_plate_nesting must be at least 1 \\(the data plate\\), got 0$"):
        estimate_log_likelihood(ppca.model, ppca.guide, ppca.data(3), num_samples=3, max_plate_nesting=0)
    with pytest.raises(ValueError, match="^data holds no items$"):
        estimate_log_likelihood(ppca.model, ppca.guide, ppca.data(3)[:0], num_samples=3)
    assert len(estimate_log_likelihood(ppca.model, ppca.guide, ppca.data(1), num_samples=1).log_px) == 1  # the least


def test_the_package_exports_its_api():
    for name in ("estimate_log_likelihood", "LogLikelihood", "make_elbo", "register_objective", "load_run", "VAE"):
        assert hasattr(pyro_vae, name), name
    assert pyro_vae.__version__


def test_the_library_does_not_reach_into_the_commands():
    """Only pyro_vae/cli/ turns errors into exit codes and talks in flags: no library module, at
    any depth (the recipes included), imports pyro_vae.cli, and no library error message names a
    flag."""
    import ast
    from pathlib import Path

    package = Path(pyro_vae.__file__).parent
    library = [p for p in package.rglob("*.py") if "cli" not in p.relative_to(package).parts[:-1]]
    expected = {"fit", "marginal", "objectives", "estimators", "runs", "data", "trainer", "paper", "manifold",
                "latent_sweep", "program_check", "evaluation", "evaluation_ais", "comparison", "paired_scores",
                "ais"}
    assert {p.stem for p in library} >= expected
    for path in library:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            module = (getattr(node, "module", None) or "") if isinstance(node, ast.ImportFrom) else None
            reaches_cli = module is not None and (
                (node.level >= 1 and module.split(".")[0] == "cli") or module.startswith("pyro_vae.cli")
                or (node.level >= 1 and not module and any(alias.name == "cli" for alias in node.names)))
            if reaches_cli:
                # a `python -m pyro_vae.X` entry point may start its command, and holds nothing
                # else: a library module that did would be imported twice under `python -m`
                body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
                thin_entry_point = len(body) == 1 and isinstance(body[0], ast.If) \
                    and "__main__" in ast.unparse(body[0].test)
                assert thin_entry_point, f"{path.name} imports pyro_vae.cli"
            if isinstance(node, ast.Raise) and node.exc is not None:
                text = " ".join(c.value for c in ast.walk(node.exc)
                                if isinstance(c, ast.Constant) and isinstance(c.value, str))
                assert " --" not in f" {text}" and "(--" not in text, f"{path.name}: {text}"


@pytest.mark.parametrize("run", ["paper-trace-L1-21000ep-equal1800-ema0.9999"])
def test_a_committed_run_loads_and_scores_as_it_did(run, data_dir, tmp_path):
    """The first image batch of a committed K = 5000 score, drawn again: the same samples."""
    import json
    from pathlib import Path

    from pyro_vae.evaluation import evaluate_run

    run_dir = Path(__file__).resolve().parents[1] / "results" / run
    report = evaluate_run(run_dir, 5000, device="cpu", limit=100, data_dir=str(data_dir), progress=False,
                          out=str(tmp_path / "score.json"))
    committed = json.loads((run_dir / "eval_test_K5000.json").read_text())["per_image"]
    for name in ("log_px", "iwae", "elbo"):
        assert report["per_image"][name] == pytest.approx(committed[name][:100], abs=1e-4), name
    assert pyro_vae.load_run(run_dir).latent_dim == 50
