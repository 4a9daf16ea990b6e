"""The trainer's weight average (--ema-decay): exact after two steps, kept across a resume, scored;
its last iterate, or other importance samples, can still be scored on request."""

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import synthetic_dataset
from pyro_vae import runs
from pyro_vae.evaluation import evaluate_run
from pyro_vae.model import VAE
from pyro_vae.trainer import TrainConfig, make_weight_average, train


def test_weight_average_is_exact_survives_resume_and_is_what_the_run_is_scored_by(tmp_path):
    decay = 0.75
    data = synthetic_dataset(n_train=16, binarize="dynamic")  # one step of 16 images an epoch
    config = TrainConfig(run_dir=str(tmp_path / "run"), epochs=1, batch_size=16, hidden_dims=(8,),
                         latent_dim=2, ema_decay=decay, snapshot_epochs=[1])
    train(config, data, progress=False, log=lambda _: None)
    first = runs.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert first["ema_updates"] == 1  # the first update copies the weights
    assert all(torch.equal(first["model_ema"][k], first["model"][k]) for k in first["model"])

    config.epochs = 2
    train(config, data, resume=True, progress=False, log=lambda _: None)
    second = runs.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert second["ema_updates"] == 2
    for name, weights in second["model"].items():
        assert not torch.equal(weights, first["model"][name])  # the step moved the weights
        expected = decay * first["model"][name] + (1 - decay) * weights
        assert torch.allclose(second["model_ema"][name], expected, atol=1e-7)

    scored = runs.load_run(tmp_path / "run").state_dict()
    assert all(torch.equal(scored[k], second["model_ema"][k]) for k in scored)
    snapshot = runs.load_checkpoint(tmp_path / "run" / "snapshots" / "epoch-00001.pt")
    assert all(torch.equal(snapshot["model"][k], first["model_ema"][k]) for k in scored)


def test_weight_average_refuses_a_decay_outside_0_1():
    assert make_weight_average(VAE(2, (8,)), 0.0) is None
    with pytest.raises(ValueError, match="ema_decay"):
        make_weight_average(VAE(2, (8,)), 1.0)


def test_evaluate_scores_the_last_iterate_or_another_seed_on_request_without_touching_the_score(tmp_path):
    data = synthetic_dataset(n_train=16, binarize="dynamic")
    run = tmp_path / "run"
    config = TrainConfig(run_dir=str(run), epochs=2, batch_size=16, hidden_dims=(8,), latent_dim=2,
                         ema_decay=0.5, snapshot_epochs=[])
    train(config, data, progress=False, log=lambda _: None)
    state = runs.load_checkpoint(run / "checkpoint.pt")
    last, _ = runs.load_run_and_config(run, weights="last")
    assert all(torch.equal(last.state_dict()[k], state["model"][k]) for k in state["model"])

    options = dict(num_samples=8, limit=8, dataset=data, progress=False)
    averaged = evaluate_run(run, **options)
    raw = evaluate_run(run, weights="last", **options)
    assert averaged["path"].endswith("eval_test_K8_first8.json")
    assert raw["path"].endswith("eval_test_K8_first8_last.json")
    whole = evaluate_run(run, num_samples=8, dataset=data, progress=False)  # all 32 test images
    assert whole["path"].endswith("eval_test_K8.json") and Path(averaged["path"]).exists()  # the subset kept
    assert (averaged["settings"]["weights"], raw["settings"]["weights"]) == ("averaged", "last")
    assert averaged["per_image"]["log_px"] != raw["per_image"]["log_px"]  # different weights, same seed
    reseeded = evaluate_run(run, seed=1, **options)
    assert reseeded["path"].endswith("eval_test_K8_first8_seed1.json") and Path(averaged["path"]).exists()
    assert json.loads(Path(averaged["path"]).read_text())["per_image"] == averaged["per_image"]
    assert reseeded["per_image"]["log_px"] != averaged["per_image"]["log_px"]  # other samples
    with pytest.raises(ValueError, match="unknown weights"):
        runs.load_run_and_config(run, weights="best")


def test_another_binarization_draw_of_the_test_set_is_scored_apart(tmp_path, data_dir):
    from pyro_vae.data import load_dataset
    from pyro_vae.paired_scores import paired_differences

    fixed = load_dataset("mnist", "dynamic", data_dir=data_dir, train_size=10)
    again = load_dataset("mnist", "dynamic", data_dir=data_dir, train_size=10, eval_binarization_seed=1)
    assert not torch.equal(fixed.test.images, again.test.images)
    assert set(again.test.images.unique().tolist()) == {0.0, 1.0}
    assert abs(fixed.test.images.mean() - again.test.images.mean()) < 1e-3  # the same grey levels behind

    def tiny_run(name: str, binarize: str) -> Path:
        run = tmp_path / name
        train(TrainConfig(run_dir=str(run), epochs=1, train_size=200, valid_size=0, hidden_dims=(16,),
                          latent_dim=2, binarize=binarize, eval_samples=0, data_dir=str(data_dir),
                          device="cpu"), progress=False, log=lambda _: None)
        return run

    run = tiny_run("dynamic", "dynamic")
    options = dict(num_samples=4, limit=50, data_dir=str(data_dir), device="cpu", progress=False)
    default = evaluate_run(run, **options)
    redrawn = evaluate_run(run, binarization_seed=1, **options)
    assert redrawn["path"].endswith("eval_test_K4_first50_draw1.json") and Path(default["path"]).exists()
    assert (default["settings"]["binarization_seed"], redrawn["settings"]["binarization_seed"]) == (0, 1)
    assert redrawn["per_image"]["log_px"] != default["per_image"]["log_px"]
    assert set(paired_differences(default, redrawn)) == {"log_px", "iwae", "elbo"}  # the same images, redrawn
    with pytest.raises(ValueError, match="another binarization seed"):
        evaluate_run(tiny_run("grey", "none"), binarization_seed=1, **options)


def test_the_trained_model_is_scored_from_memory_with_the_numbers_a_reload_gives(tmp_path, monkeypatch):
    from pyro_vae import runs
    from pyro_vae.evaluation import evaluate_run
    from pyro_vae.trainer import train_and_report

    run, data = tmp_path / "run", synthetic_dataset()
    config = TrainConfig(run_dir=str(run), epochs=2, batch_size=16, hidden_dims=(8,), latent_dim=2, eval_samples=5,
                         ema_decay=0.9)
    reload = runs.load_run_and_config

    def refuse(*args, **kwargs):
        raise AssertionError("the trained model was read back from disk")

    monkeypatch.setattr(runs, "load_run_and_config", refuse)
    report = train_and_report(config, progress=False, dataset=data)["eval"]
    monkeypatch.setattr(runs, "load_run_and_config", reload)
    again = evaluate_run(run, 5, device="cpu", progress=False, dataset=data, out=str(tmp_path / "again.json"))
    assert report["per_image"] == again["per_image"] and report["settings"]["weights"] == "averaged"


def test_tensorboard_events_hold_every_epoch_and_the_pictures(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pyro_vae import tensorboard_log

    data = synthetic_dataset(n_train=32, binarize="dynamic")
    run = tmp_path / "run"
    trained = train(TrainConfig(run_dir=str(run), epochs=3, batch_size=16, hidden_dims=(16,), latent_dim=2,
                                eval_samples=0, device="cpu", tensorboard=True), data, progress=False,
                    log=lambda _: None)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    test_elbo = [(e.step, e.value) for e in events.Scalars("elbo/test")]
    assert [step for step, _ in test_elbo] == [1, 2, 3]
    assert [value for _, value in test_elbo] == pytest.approx([row["test_elbo"] for row in trained.history], rel=1e-6)
    assert {"elbo/train", "learning_rate", "time/ms_per_step"} <= set(events.Tags()["scalars"])
    assert set(events.Tags()["images"]) == {"reconstructions", "prior_samples"}
    # without the package: one ValueError that says what to install, before any work
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ValueError, match="pip install"):
        tensorboard_log.check_tensorboard()
