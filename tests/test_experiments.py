"""The seed's experiments: the latent grid, the sweep's skip/resume, and every figure command."""

import csv

import pytest
import torch

from pyro_vae import runs
from pyro_vae.cli import experiments
from pyro_vae.recipes.latent_sweep import active_units, overtaken_from
from pyro_vae.recipes.manifold import draw_manifold, latent_grid
from pyro_vae.cli import UsageError
from pyro_vae.model import VAE
from pyro_vae.runs import read_metrics
from tests.conftest import assert_drawn


def test_latent_grid_is_the_inverse_normal_cdf_of_an_even_grid():
    z = latent_grid(4).double()
    assert z.shape == (16, 2)
    u = torch.distributions.Normal(0.0, 1.0).cdf(z)
    assert torch.allclose(u[:4, 0], torch.tensor([0.125, 0.375, 0.625, 0.875], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(u[::4, 1], torch.tensor([0.875, 0.625, 0.375, 0.125], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(z.sum(0), torch.zeros(2, dtype=torch.float64), atol=1e-5)  # symmetric about 0


def sweep(tmp_path, epochs, capsys):
    experiments.main(["latent-sweep", "--latent-dims", "2", "3", "--epochs", str(epochs), "--train-size", "300",
                      "--hidden-dims", "32", "--eval-samples", "3", "--out", str(tmp_path), "--no-progress"])
    return capsys.readouterr().out


def test_sweep_skips_finished_runs_and_resumes_unfinished_ones(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("PYRO_VAE_DATA", str(data_dir))
    first = sweep(tmp_path, 1, capsys)
    assert "J=2: training" in first and "J=3: training" in first
    out = tmp_path / "latent_sweep"
    for name in ("latent_sweep.csv", "latent_sweep.md"):
        assert (out / name).stat().st_size > 0
    for name in ("latent_sweep_curves.png", "latent_sweep_summary.png"):
        assert_drawn(out / name)
    again = sweep(tmp_path, 1, capsys)
    assert "J=2: finished run" in again and "skipped" in again and "training" not in again
    longer = sweep(tmp_path, 2, capsys)
    assert "J=2: resuming" in longer
    assert [row["epoch"] for row in read_metrics(out / "J2-adam" / "metrics.csv")] == [1, 2]
    assert "| 3 | adam 0.001 | 2 | 600 |" in (out / "latent_sweep.md").read_text()
    # Adagrad beside Adam in the same folder: one table of both
    experiments.main(["latent-sweep", "--latent-dims", "3", "--optimizer", "adagrad", "--lr", "0.02", "--epochs", "1",
                      "--train-size", "300", "--hidden-dims", "32", "--eval-samples", "3", "--out", str(tmp_path),
                      "--no-progress", "--figure-dir", str(tmp_path / "figures")])
    for name in ("latent_sweep_curves.png", "latent_sweep_summary.png"):
        assert (tmp_path / "figures" / name).read_bytes() == (out / name).read_bytes()
    assert (out / "J3-adagrad-lr0.02").is_dir()  # a step size asked for is part of the run's name
    table = (out / "latent_sweep.md").read_text()
    assert "- adam 0.001: J = 3's test ELBO above J = 2's" in table
    assert "- adagrad" not in table  # one J at that step size: nothing to compare
    with open(out / "latent_sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["J"], r["optimizer"], r["lr"], r["epochs"], r["images_seen"]) for r in rows] == [
        ("3", "adagrad", "0.02", "1", "300"), ("2", "adam", "0.001", "2", "600"), ("3", "adam", "0.001", "2", "600")]
    for r in rows:
        assert float(r["gap"]) == pytest.approx(float(r["train_elbo"]) - float(r["test_elbo"]))
        assert 0 <= int(r["active_units"]) <= int(r["J"])
        # binary pixels: log p(x) < 0; and IS with K samples is above the one-sample ELBO, up to noise
        assert float(r["test_elbo"]) - 5 < float(r["log_px"]) < 0


def test_active_units_counts_the_latent_dimensions_whose_mean_moves_with_the_data():
    vae = VAE(latent_dim=4, hidden_dims=(8,))
    with torch.no_grad():
        vae.encoder.loc.weight.zero_()
        vae.encoder.loc.bias.fill_(0.3)  # a constant mean: switched off, however far from 0
        vae.encoder.loc.weight[1].fill_(1.0)
        vae.encoder.loc.weight[3].fill_(0.01)  # moves, but by less than Burda et al.'s 10^-2 variance
    images = torch.rand(500, 784)
    assert active_units(vae, images) == 1
    assert active_units(vae, images, threshold=0.0) == 2


def test_overtaking_is_the_start_of_the_last_stretch_above():
    def history(values):
        return [{"epoch": i + 1, "images_seen": 100 * (i + 1), "test_elbo": v} for i, v in enumerate(values)]

    small = history([-100, -95, -93, -92, -91])
    assert overtaken_from(history([-110, -94, -94, -91, -90]), small) == 400  # above at 200, below at 300
    assert overtaken_from(history([-99, -94, -92, -91, -90]), small) == 100
    assert overtaken_from(history([-99, -94, -92, -91, -92]), small) is None  # below at the end


def test_manifold_and_figures_write_pngs(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("PYRO_VAE_DATA", str(data_dir))
    experiments.main(["manifold", "--epochs", "1", "--train-size", "300", "--hidden-dims", "32",
                      "--grid-size", "5", "--out", str(tmp_path), "--no-progress"])
    run = tmp_path / "manifold-mnist-J2"
    for name in ("manifold.png", "latent_scatter.png"):
        assert_drawn(run / name)
    for name in ("learning_curves.png", "reconstructions.png", "prior_samples.png"):
        (run / name).unlink()
    experiments.main(["figures", str(run)])
    for name in ("learning_curves.png", "reconstructions.png", "prior_samples.png"):
        assert_drawn(run / name)
    experiments.main(["figures", str(run), "--out", str(tmp_path / "figures")])
    for name in ("learning_curves.png", "reconstructions.png", "prior_samples.png"):
        assert_drawn(tmp_path / "figures" / name)


def test_draw_manifold_with_class_names(tmp_path):
    vae = VAE(latent_dim=2, hidden_dims=(8,))
    images, labels = torch.rand(50, 784), torch.arange(50) % 10
    paths = draw_manifold(vae, images, labels, tmp_path, 3, [f"class {i}" for i in range(10)])
    for path in paths:
        assert_drawn(path)


def test_burda_schedule_has_3280_epochs_in_eight_stages():
    from pyro_vae.schedules import burda_lr

    rates = [burda_lr(epoch) for epoch in range(3280)]
    stages = sorted(set(rates), reverse=True)
    assert len(stages) == 8 and [rates.count(r) for r in stages] == [3**i for i in range(8)]
    assert stages[0] == 1e-3 and abs(stages[-1] - 1e-3 * 10 ** (-1)) < 1e-12
    assert burda_lr(5000) == stages[-1]
    # scaled to a shorter run: the same eight rates, stages 1/10 as long, ending at the last rate
    short = [burda_lr(epoch, 1e-3, 328) for epoch in range(328)]
    assert [short.count(r) for r in stages] == [round(3**i / 10 + sum(3**j for j in range(i)) / 10)
                                                - round(sum(3**j for j in range(i)) / 10) for i in range(8)]
    assert short[-1] == stages[-1]


def test_paper_recipe_runs_and_schedules_the_rate(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("PYRO_VAE_DATA", str(data_dir))
    experiments.main(["paper", "--epochs", "4", "--lr-schedule", "burda-equal", "--train-size", "200",
                      "--eval-samples", "3", "--curve-samples", "2", "--out", str(tmp_path), "--no-progress"])
    run_dir = tmp_path / "paper-trace-L1-4ep-equal"
    curve = read_metrics(run_dir / "learning_curve.csv")
    assert [r["epoch"] for r in curve] == [1, 2, 3, 4]
    assert_drawn(run_dir / "learning_curve.png")
    # each point is the IS estimate of that epoch's weights: above their mean ELBO (NLL below -ELBO)
    assert all(r["num_samples"] == 2 and r["test_nll"] <= -r["test_elbo"] for r in curve)
    rows = read_metrics(run_dir / "metrics.csv")
    assert [r["lr"] for r in rows] == [1e-3 * 10 ** (-i / 7) for i in (0, 2, 4, 6)]  # 8 stages in 4 epochs
    assert sorted(p.name for p in (run_dir / "snapshots").iterdir()) == [f"epoch-{e:05d}.pt" for e in range(1, 5)]
    snapshot = runs.load_checkpoint(run_dir / "snapshots" / "epoch-00003.pt")
    assert snapshot["epoch"] == 3
    assert snapshot["model"].keys() == runs.load_checkpoint(run_dir / "checkpoint.pt")["model"].keys()
    import json
    config = json.loads((run_dir / "config.json").read_text())
    assert config["hidden_dims"] == [200, 200] and config["latent_dim"] == 50
    assert config["binarize"] == "dynamic" and config["adam_eps"] == 1e-4 and config["valid_size"] == 0

    # a finished run is continued from a copy, at the schedule's last rate
    longer = tmp_path / "paper-trace-L1-6ep-equal4"
    continue_args = ["paper", "--epochs", "6", "--lr-schedule", "burda-equal", "--schedule-epochs", "4",
                     "--train-size", "200", "--eval-samples", "0", "--curve-samples", "0",
                     "--out", str(tmp_path), "--no-progress", "--continue-from", str(run_dir)]
    experiments.main(continue_args)
    continued = read_metrics(longer / "metrics.csv")
    assert [(r["epoch"], r["train_elbo"]) for r in continued[:4]] == [(r["epoch"], r["train_elbo"]) for r in rows]
    assert [r["lr"] for r in continued[4:]] == [1e-3 * 10 ** (-7 / 7)] * 2  # the eighth rate
    assert (longer / "snapshots" / "epoch-00006.pt").exists() and len(read_metrics(run_dir / "metrics.csv")) == 4
    experiments.main(continue_args)  # the same command again: nothing copied over the continued run
    assert "resuming it, not copying" in capsys.readouterr().out
    assert len(read_metrics(longer / "metrics.csv")) == 6
    # its curve keeps the copied points whose snapshots are gone, and scores the snapshots there are
    for snapshot in (longer / "snapshots").glob("epoch-0000[1-5].pt"):
        snapshot.unlink()
    experiments.main(["curve", str(longer), "--num-samples", "2", "--no-progress"])
    longer_curve = read_metrics(longer / "learning_curve.csv")
    assert longer_curve[:4] == curve and [r["epoch"] for r in longer_curve] == [1, 2, 3, 4, 6]
    experiments.main(["curve", str(longer), "--num-samples", "3", "--no-progress"])  # another K: no mixing
    assert [r["epoch"] for r in read_metrics(longer / "learning_curve.csv")] == [6]
    with pytest.raises(ValueError, match="has trained 4 epochs"):
        experiments.main(["paper", "--epochs", "4", "--out", str(tmp_path / "x"), "--continue-from", str(run_dir)])
    with pytest.raises(ValueError, match="not a paper run"):
        experiments.main(["paper", "--epochs", "6", "--out", str(tmp_path / "y"), "--continue-from", str(tmp_path)])
    (tmp_path / "config.json").write_text("{ truncated")
    with pytest.raises(ValueError, match="not a paper run"):
        experiments.main(["paper", "--epochs", "6", "--out", str(tmp_path / "y"), "--continue-from", str(tmp_path)])
    # continued at another batch size: the name says so, and the config holds the new size
    smaller = tmp_path / "paper-trace-L1-7ep-equal4-b50"
    experiments.main(["paper", "--epochs", "7", "--lr-schedule", "burda-equal", "--schedule-epochs", "4",
                      "--batch-size", "50", "--train-size", "200", "--eval-samples", "0", "--curve-samples", "0",
                      "--out", str(tmp_path), "--no-progress", "--continue-from", str(longer)])
    assert [r["epoch"] for r in read_metrics(smaller / "metrics.csv")] == list(range(1, 8))
    assert json.loads((smaller / "config.json").read_text())["batch_size"] == 50
    with pytest.raises(UsageError, match="must be fewer than --epochs"):
        experiments.main(["paper", "--epochs", "4", "--schedule-epochs", "4", "--out", str(tmp_path)])

    # several runs on one plot, one with a final score at a second K; a run without a curve is
    # refused in one line
    (run_dir / "eval_test_K30.json").write_text((run_dir / "eval_test_K3.json").read_text())
    figure = tmp_path / "curves.png"
    experiments.main(["paper-figure", str(run_dir), str(run_dir), "--out", str(figure)])
    assert_drawn(figure)
    with pytest.raises(UsageError, match="no learning_curve.csv"):
        experiments.main(["paper-figure", str(tmp_path), "--out", str(figure)])


def test_paper_recipe_trains_dreg_on_the_two_layer_net(tmp_path, data_dir, monkeypatch, capsys):
    """The rows of Burda et al.'s Table 1 beyond the one-layer VAE and IWAE: its own run name and
    net, the figure's reference from their table, and no continuing it as another net."""
    import json

    monkeypatch.setenv("PYRO_VAE_DATA", str(data_dir))
    experiments.main(["paper", "--model", "burda2", "--elbo", "dreg", "--num-particles", "2", "--epochs", "1",
                      "--train-size", "100", "--eval-samples", "2", "--curve-samples", "2", "--out", str(tmp_path),
                      "--no-progress"])
    run_dir = tmp_path / "paper-burda2-dreg-k2-1ep"
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["model"], config["elbo"], config["num_particles"]) == ("burda2", "dreg", 2)
    assert "z2" in str(runs.load_checkpoint(run_dir / "checkpoint.pt")["model"].keys())  # the two-layer net
    with pytest.raises(ValueError, match="a run of the model burda2, not vae"):
        experiments.main(["paper", "--elbo", "dreg", "--num-particles", "2", "--epochs", "2", "--out",
                          str(tmp_path / "x"), "--continue-from", str(run_dir)])
    with pytest.raises(UsageError, match="trains trace, iwae, dreg"):
        experiments.main(["paper", "--elbo", "renyi", "--out", str(tmp_path)])
    figure = tmp_path / "curve.png"
    experiments.main(["paper-figure", str(run_dir), "--out", str(figure)])
    assert_drawn(figure)


def test_image_grids_take_any_square_images_and_refuse_others():
    from pyro_vae.data import DATASET_INFO
    from pyro_vae.plots import digit_grid

    grid = digit_grid(torch.rand(6, 16 * 16), nrow=3, padding=0)
    assert grid.shape == (3, 2 * 16, 3 * 16)
    with pytest.raises(ValueError, match="not square"):
        digit_grid(torch.rand(2, 15), nrow=2)
    assert DATASET_INFO["fashion-mnist"].class_names[0] == "T-shirt/top" and DATASET_INFO["mnist"].class_names is None
