"""Estimator comparison: the statistics it reports, checked where they are known."""

import json
import math

import pytest
import torch

from pyro_vae import comparison as compare
from pyro_vae.cli import compare as compare_cli
from pyro_vae.gradients import gradient_moments, snr_summary
from pyro_vae.model import VAE
from pyro_vae.objectives import make_elbo
from tests.conftest import call


def test_gradient_snr_on_a_toy_with_known_moments():
    # loss = sum_j theta_j (a_j + b_j eps_j): the gradient is a + b eps, mean a, variance b^2
    a = torch.tensor([1.0, -2.0, 0.5, 3.0])
    b = torch.tensor([0.5, 4.0, 1.0, 0.1])
    theta = torch.zeros(4, requires_grad=True)
    moments = gradient_moments(lambda: (theta * (a + b * torch.randn(4))).sum(), {"toy": [theta]}, 20_000)["toy"]
    assert torch.allclose(moments.mean.float(), a, atol=0.05)
    assert torch.allclose(moments.variance.sqrt().float(), b, rtol=0.03)
    snr = (a.abs() / b).sort().values
    summary = snr_summary(moments)
    assert summary["snr_median"] == pytest.approx(snr[1:3].mean().item(), rel=0.05)
    assert summary["snr_mean"] == pytest.approx(snr.mean().item(), rel=0.05)


def repeated_bounds(name, particles, vae, x, repeats):
    elbo = make_elbo(name, particles, vectorize=particles > 1)
    with torch.no_grad():
        return torch.tensor([-elbo.differentiable_loss(vae.model, vae.guide, x).item() for _ in range(repeats)])


@pytest.fixture
def small_model():
    vae = VAE(latent_dim=4, hidden_dims=(32,), binary_data=True)
    vae.encoder.loc.bias.data.fill_(0.8)  # a KL of a few nats, so the KL's noise matters
    x = torch.bernoulli(torch.full((8, 784), 0.15), generator=torch.Generator().manual_seed(1))
    return vae, x


def test_trace_and_meanfield_agree_and_meanfield_has_lower_variance(small_model):
    vae, x = small_model
    trace = repeated_bounds("trace", 1, vae, x, 400)
    meanfield = repeated_bounds("meanfield", 1, vae, x, 400)
    stderr = math.sqrt(trace.var() / 400 + meanfield.var() / 400)
    assert abs(trace.mean() - meanfield.mean()) < 4 * stderr
    assert meanfield.var() < trace.var()


def test_iwae_bound_is_above_the_elbo_and_grows_with_k(small_model):
    vae, x = small_model
    means = [repeated_bounds("iwae", k, vae, x, 100).mean().item() for k in (1, 5, 50)]
    elbo = repeated_bounds("trace", 1, vae, x, 100).mean().item()
    assert means[0] == pytest.approx(elbo, abs=2.0)  # iwae with K=1 is the ELBO
    assert elbo < means[1] < means[2]


def test_fixed_model_scores_every_estimator(small_model):
    vae, x = small_model
    specs = compare_cli.parse_estimators("trace:1,meanfield:1,iwae:5,stl:1,dreg:5,miwae:2x3,piwae:2x3,ciwae:5")
    rows = compare.score_fixed_model(vae, x[:4], x, specs, repeats=5, seed=0, progress=False)
    assert [r["label"] for r in rows] == ["trace L=1", "meanfield L=1", "iwae K=5", "stl L=1", "dreg K=5",
                                          "miwae M=2 K=3", "piwae M=2 K=3", "ciwae K=5"]
    assert [r["samples"] for r in rows] == [1, 1, 5, 1, 5, 6, 6, 5]
    assert rows[4]["bound_mean"] == pytest.approx(rows[2]["bound_mean"], abs=1e-4)  # dreg's bound is IWAE's
    for r in rows:
        assert r["encoder_num_parameters"] == sum(p.numel() for p in vae.encoder.parameters())
        assert r["decoder_snr_median"] > 0 and r["ms_per_gradient"] > 0
    assert rows[2]["bound_mean"] > rows[0]["bound_mean"] - 5
    assert "iwae K=5" in compare.fixed_model_table(rows)


@pytest.mark.parametrize("argv,message", [
    (["--train", "--estimators", "trace:1,bogus:2"], "unknown estimator"),
    (["--train", "--estimators", "iwae:0"], "positive"),
    ([], "either RUN_DIR"),
    (["/nonexistent/run"], "not a directory"),
    (["--train", "--repeats", "5"], "--repeats applies only to fixed-model mode"),
    (["--train", "--estimators", "miwae:ax3"], "NAME:MxK"),
    (["--train", "--estimators", "miwae:5"], "miwae and piwae take NAME:MxK"),
    (["--train", "--estimators", "iwae:2x5"], "the others NAME:K"),
    ([".", "--epochs", "3"], "--epochs applies only to training mode"),
    ([".", "--hidden-dims", "10"], "--hidden-dims applies only to training mode"),
])
def test_bad_compare_input(argv, message, capsys):
    status, err = call(compare_cli.main, argv, capsys)
    assert status == 2 and message in err and err.count("\n") == 1, err


def test_snr_slopes_recover_known_power_laws():
    rows = [{"estimator": "iwae", "samples": k, "encoder_snr_median": 3 * k ** -0.5, "decoder_snr_median": k ** 0.5}
            for k in (1, 5, 10, 50)] + [{"estimator": "trace", "samples": 1, "encoder_snr_median": 1.0,
                                         "decoder_snr_median": 1.0}]
    (slopes,) = compare.snr_slopes(rows)  # trace has one point: no slope
    assert slopes["estimator"] == "iwae"
    assert slopes["encoder_slope"] == pytest.approx(-0.5) and slopes["decoder_slope"] == pytest.approx(0.5)
    assert "-0.50" in compare.slopes_table([slopes])


def test_the_snrs_go_to_tensorboard_one_curve_per_estimator(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pyro_vae.tensorboard_log import log_snr

    rows = [{"estimator": name, "samples": k, "encoder_snr_median": 1.0 / k, "decoder_snr_median": k ** 0.5,
             "bound_mean": -90.0 + k} for name in ("iwae", "dreg") for k in (1, 5, 50)]
    log_snr(tmp_path, rows)
    events = EventAccumulator(str(tmp_path)).Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("snr_encoder/dreg")] == [(1, 1.0), (5, 0.2), (50, 0.02)]
    assert {"snr_decoder/iwae", "bound/iwae"} <= set(events.Tags()["scalars"])


def test_training_mode_trains_each_estimator_and_reports_its_bounds(data_dir, tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["--train", "--estimators", "trace:1,miwae:2x2", "--epochs", "1", "--train-size", "200",
            "--hidden-dims", "16", "--latent-dim", "2", "--binarize", "dynamic", "--eval-samples", "10",
            "--iwae-k", "5", "--eval-limit", "30", "--data-dir", str(data_dir), "--out", str(out), "--no-progress"]
    status, err = call(compare_cli.main, argv, capsys)
    assert status == 0, err
    rows = json.loads((out / "comparison.json").read_text())["estimators"]
    assert [(r["estimator"], r["estimates"], r["particles"], r["epochs"], r["eval_images"]) for r in rows] == [
        ("trace", 1, 1, 1, 30), ("miwae", 2, 2, 1, 30)]
    for r in rows:  # on the same samples, per image: log p(x) estimate >= IWAE_5 >= ELBO
        assert r["log_px"] >= r["iwae"] >= r["elbo"]
    # the paired difference is the mean and standard error of the per-image differences of the
    # two runs' own reports (an unpaired error, or images out of order, would not match)
    (trace_report,), (miwae_report,) = ([json.loads(p.read_text()) for p in (out / tag).glob("eval_test_K10*.json")]
                                        for tag in ("trace-1-epochs", "miwae-2x2-epochs"))
    differences = (torch.tensor(miwae_report["per_image"]["log_px"], dtype=torch.float64)
                   - torch.tensor(trace_report["per_image"]["log_px"], dtype=torch.float64))
    assert len(differences) == 30
    assert rows[0]["log_px_diff"] == 0 and rows[0]["log_px_diff_stderr"] == 0
    assert rows[1]["log_px_diff"] == pytest.approx(differences.mean().item(), abs=1e-6)
    assert rows[1]["log_px_diff_stderr"] == pytest.approx(differences.std().item() / 30 ** 0.5, rel=1e-6)
    table = (out / "comparison.md").read_text()
    assert "IWAE_5" in table and "on 30 test images" in table and f"{rows[1]['log_px_diff']:+.2f}" in table
    # run again: both runs are reused (no training, no scoring), the table is the same; with
    # another K, they are scored again
    moved = tmp_path / "moved"
    out.rename(moved)
    compare_cli.main([a if a != str(out) else str(moved) for a in argv])
    assert capsys.readouterr().out.count("trained and scored, reused") == 2
    assert json.loads((moved / "comparison.json").read_text())["estimators"] == rows
    out = moved
    compare_cli.main([{"10": "12", str(tmp_path / "study"): str(out)}.get(a, a) for a in argv])
    assert "reused" not in capsys.readouterr().out
    assert "K=12" in (out / "comparison.md").read_text()
    assert (out / "learning_curves.png").exists() and (out / "miwae-2x2-epochs" / "checkpoint.pt").exists()


def test_fixed_model_mode_scores_a_committed_run_end_to_end(tmp_path, data_dir, monkeypatch, capsys):
    """The command on the benchmark's VAE: one row per estimator in comparison.json, the bounds
    ordered as they must be (ELBO <= IWAE_5, on the same images), and the table and figures."""
    import json
    from pathlib import Path

    from tests.conftest import assert_drawn

    monkeypatch.setenv("PYRO_VAE_DATA", str(data_dir))
    run = Path(__file__).resolve().parents[1] / "results" / "paper-trace-L1-21000ep-equal1800-ema0.9999"
    out = tmp_path / "comparison"
    status, err = call(compare_cli.main, [str(run), "--estimators", "trace:1,iwae:5,dreg:5", "--num-images", "40",
                                          "--grad-batch", "8", "--repeats", "4", "--out", str(out)], capsys)
    assert status == 0, err
    report = json.loads((out / "comparison.json").read_text())
    rows = {r["label"]: r for r in report["estimators"]}
    assert list(rows) == ["trace L=1", "iwae K=5", "dreg K=5"]
    assert rows["trace L=1"]["bound_mean"] < rows["iwae K=5"]["bound_mean"] < 0
    # the same draws: the same bound, up to float32 summation order
    assert rows["dreg K=5"]["bound_mean"] == pytest.approx(rows["iwae K=5"]["bound_mean"], abs=1e-4)
    assert (out / "comparison.md").read_text().count("\n| ") >= 3
    for png in out.glob("*.png"):
        assert_drawn(png)
    assert list(out.glob("*.png")), "no figure written"
