"""Interrupted runs resume exactly; corrupt checkpoints and NaNs give clear errors; nothing is lost."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyro_vae import load_run
from pyro_vae.fit import TrainingFailed
from pyro_vae.runs import CHECKPOINT_FORMAT, load_checkpoint, read_metrics, save_checkpoint
from pyro_vae.trainer import TrainConfig, train
from tests.conftest import REPO, run_cli, synthetic_dataset

pytestmark = [pytest.mark.slow, pytest.mark.needs_data]  # processes of their own: deselect with -m "not slow"

# small enough to be quick, long enough (about 0.3 s an epoch) to be interrupted mid-run
RUN_FLAGS = ["--train-size", "3000", "--valid-size", "1000", "--hidden-dims", "100",
             "--latent-dim", "5", "--eval-samples", "0", "--no-progress", "--seed", "3"]


def without_timing(rows):
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in rows]


def start_training(run: Path, epochs: int, data_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYRO_VAE_DATA": str(data_dir), "PYRO_VAE_NO_DOWNLOAD": "1"}
    return subprocess.Popen([sys.executable, "-m", "pyro_vae.train", *RUN_FLAGS, "--epochs", str(epochs),
                             "--run-dir", str(run), *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference_metrics(tmp_path_factory):
    from tests.conftest import real_data_dir

    data_dir = real_data_dir()
    if data_dir is None:
        pytest.skip("real MNIST not found (set PYRO_VAE_DATA)")
    run = tmp_path_factory.mktemp("reference") / "run"
    # in this process, from the same flags and with the threads the commands get (conftest)
    from pyro_vae.cli.train import build_parser, config_from_args

    args = build_parser().parse_args([*RUN_FLAGS, "--epochs", "6", "--run-dir", str(run), "--data-dir", str(data_dir)])
    train(config_from_args(args)[0], progress=False, log=lambda _: None)
    return read_metrics(run / "metrics.csv")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(sig, reference_metrics, data_dir, tmp_path):
    run = tmp_path / "run"
    process = start_training(run, 6, data_dir)
    wait_for(run / "checkpoint.pt", process)
    time.sleep(0.15)  # land somewhere inside a later epoch
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    assert process.returncode == (-9 if sig == signal.SIGKILL else 130), (out, err)
    if sig == signal.SIGINT:
        assert "--resume" in out and "checkpoint saved" in out
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] < 6  # really interrupted
    resumed = run_cli("pyro_vae.train", "--run-dir", str(run), "--resume", "--no-progress",
                      env={"PYRO_VAE_DATA": str(data_dir)})
    assert resumed.returncode == 0, resumed.stderr
    assert without_timing(read_metrics(run / "metrics.csv")) == without_timing(reference_metrics)


def test_starting_over_an_existing_run_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    config = TrainConfig(run_dir=str(run), epochs=1, batch_size=16, hidden_dims=(8,), latent_dim=2,
                         eval_samples=0)
    train(config, synthetic_dataset(), progress=False, log=lambda _: None)
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match="already holds a run"):
        train(config, synthetic_dataset(), progress=False)
    assert (run / "checkpoint.pt").read_bytes() == before
    (run / "notes.txt").write_text("mine")
    (run / "learning_curve.csv").write_text("epoch\n1\n")  # the old run's curve must not outlive it
    train(config, synthetic_dataset(), overwrite=True, progress=False, log=lambda _: None)
    assert (run / "notes.txt").read_text() == "mine"  # --overwrite removes only run outputs
    assert not (run / "learning_curve.csv").exists()
    with pytest.raises(ValueError, match="contradict"):
        train(config, synthetic_dataset(), overwrite=True, resume=True, progress=False)


def test_truncated_checkpoint_gives_one_clear_line(tmp_path, data_dir, capsys):
    from pyro_vae.cli import evaluate as evaluate_cli, train as train_cli
    from tests.conftest import call

    run = tmp_path / "run"
    config = TrainConfig(run_dir=str(run), epochs=1, batch_size=16, hidden_dims=(8,), latent_dim=2)
    train(config, synthetic_dataset(), progress=False, log=lambda _: None)
    content = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(content[: len(content) // 2])
    with pytest.raises(ValueError, match="corrupt or not a pyro_vae checkpoint"):
        load_run(run)
    for main, args in ((train_cli.main, ["--run-dir", str(run), "--resume"]), (evaluate_cli.main, [str(run)])):
        status, err = call(main, args, capsys)  # in-process: a fresh process is test_cli's business
        assert status == 2 and err.count("\n") == 1, err
        assert "checkpoint.pt" in err and "Traceback" not in err


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/pyro_vae_test_pickle_ran")


def test_checkpoint_with_code_is_refused_and_never_run(tmp_path):
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "payload": RunsCode()}, path)
    with pytest.raises(ValueError, match="corrupt or not a pyro_vae checkpoint"):
        load_checkpoint(path)
    assert not MARKER.exists()
    torch.save({"weights": torch.zeros(3)}, path)  # loadable, but foreign
    with pytest.raises(ValueError, match="not a pyro_vae checkpoint"):
        load_checkpoint(path)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left behind


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    data = synthetic_dataset(n_train=64, binarize="none")
    config = TrainConfig(run_dir=str(run), epochs=1, batch_size=16, hidden_dims=(8,), latent_dim=2,
                         binarize="none")
    train(config, data, progress=False, log=lambda _: None)
    data.train.images[:] = float("nan")  # every batch of epoch 2 now gives a NaN loss
    config.epochs = 2
    with pytest.raises(TrainingFailed, match=r"loss \(-ELBO\) is nan at epoch 2, step 1"):
        train(config, data, resume=True, progress=False, log=lambda _: None)
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert len(read_metrics(run / "metrics.csv")) == 1


class _OnDevice:
    """Stands for a tensor a checkpoint mapped onto a GPU: ``.numpy()`` refuses, as torch does."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def cpu(self) -> torch.Tensor:
        return self.tensor

    def numpy(self):
        raise TypeError("can't convert cuda:0 device type tensor to numpy")


def test_rng_state_restores_from_tensors_loaded_onto_the_run_device():
    import random

    import numpy as np

    from pyro_vae.runs import rng_state, set_rng_state

    saved = rng_state()
    draws = (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random())
    name, keys, *rest = saved["numpy"]
    set_rng_state({**saved, "torch": _OnDevice(saved["torch"]), "numpy": [name, _OnDevice(keys), *rest]})
    assert (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()) == draws
