"""Data-parallel training and sharded evaluation: 2 gloo processes on one CPU machine."""

import json
import os
import subprocess
import sys

import pytest
import torch

from pyro_vae.trainer import TrainConfig, train
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow  # processes of their own: deselect with -m "not slow"

WORKERS = REPO / "tests" / "workers"


def torchrun(*args, env=None, timeout=240):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYRO_VAE_NO_DOWNLOAD": "1", **(env or {})})


def test_two_ranks_train_like_one_process_on_the_combined_batch(tmp_path):
    alone, shared = tmp_path / "alone.pt", tmp_path / "shared.pt"
    single = subprocess.run([sys.executable, str(WORKERS / "ddp_steps.py"), str(alone)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert single.returncode == 0, single.stderr
    result = torchrun(str(WORKERS / "ddp_steps.py"), str(shared))
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = torch.load(alone), torch.load(shared)
    for key, value in a["final"].items():
        assert torch.allclose(value, b["final"][key], atol=1e-5), key
    assert max((a["final"][k] - a["initial"][k]).abs().max() for k in a["final"]) > 1e-3  # it trained


def test_sharded_evaluation_equals_one_process(tmp_path, data_dir):
    run = tmp_path / "run"
    train(TrainConfig(run_dir=str(run), epochs=1, train_size=200, hidden_dims=(32,), latent_dim=4,
                      eval_samples=0, data_dir=str(data_dir)), progress=False, log=lambda _: None)
    # on the CPU, where one process and two give the same bits (and two ranks need no two GPUs)
    flags = ["--num-samples", "20", "--limit", "230", "--batch-size", "40", "--no-progress", "--seed", "4",
             "--device", "cpu"]
    # one thread, as each rank: torch's reductions may group sums differently with more threads
    single = run_cli("pyro_vae.evaluate", str(run), *flags, env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    one = json.loads((run / "eval_test_K20_first230_seed4_b40.json").read_text())
    (run / "eval_test_K20_first230_seed4_b40.json").unlink()
    result = torchrun("-m", "pyro_vae.evaluate", str(run), *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    two = json.loads((run / "eval_test_K20_first230_seed4_b40.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert one["per_image"] == two["per_image"]
    assert one["summary"] == two["summary"]

    ais = ["--method", "ais", "--chains", "4", "--ais-steps", "3", "--leapfrog-steps", "2", "--limit", "30",
           "--batch-size", "8", "--no-progress", "--device", "cpu"]
    name = "eval_test_ais_C4_T3_guide_L2_b8_first30.json"
    single = run_cli("pyro_vae.evaluate", str(run), *ais, env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    one = json.loads((run / name).read_text())
    (run / name).unlink()
    result = torchrun("-m", "pyro_vae.evaluate", str(run), *ais)
    assert result.returncode == 0, result.stderr[-2000:]
    two = json.loads((run / name).read_text())
    assert two["processes"] == 2 and one["per_image"] == two["per_image"]
    assert not (run / name).with_suffix(".parts").exists()


def test_a_failing_rank_fails_the_job_without_hanging():
    result = torchrun(str(WORKERS / "fail_rank.py"), timeout=180)
    assert result.returncode != 0
    assert "rank 1 failed on purpose" in result.stdout + result.stderr


def test_torchrun_train_writes_once_and_resumes(tmp_path, data_dir):
    run = tmp_path / "run"
    flags = ["-m", "pyro_vae.train", "--train-size", "400", "--batch-size", "50", "--hidden-dims", "32",
             "--latent-dim", "4", "--eval-samples", "10", "--no-progress", "--device", "cpu", "--run-dir", str(run)]
    first = torchrun(*flags, "--epochs", "1", env={"PYRO_VAE_DATA": str(data_dir)})
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.count("epoch 1/1") == 1  # rank 0 alone logs
    report = json.loads((run / "eval_test_K10.json").read_text())
    assert report["processes"] == 2 and len(report["per_image"]["log_px"]) == 10_000
    again = torchrun("-m", "pyro_vae.train", "--run-dir", str(run), "--resume", "--epochs", "2",
                     "--no-progress", env={"PYRO_VAE_DATA": str(data_dir)})
    assert again.returncode == 0, again.stderr[-2000:]
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[2].startswith("2,800,")  # header, epoch 1, epoch 2: 400 images each


def test_more_ranks_than_gpus_is_one_clear_error(monkeypatch):
    from pyro_vae import distributed

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: pytest.fail(f"set_device({index}) called"))
    second_rank = distributed.World(rank=1, size=2, local_rank=1)
    with pytest.raises(ValueError, match="at most 1 per machine, or train on the CPU"):
        distributed.local_device(torch.device("cuda"), second_rank)
    assert distributed.local_device(torch.device("cpu"), second_rank) == torch.device("cpu")
