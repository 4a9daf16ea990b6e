"""Data-parallel training and sharded evaluation: 2 gloo processes on one CPU machine."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from pyro_vae import distributed
from pyro_vae.trainer import TrainConfig, train
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # processes of their own: deselect with -m "not slow"

WORKERS = REPO / "tests" / "workers"


def torchrun(*args, env=None, timeout=240):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYRO_VAE_NO_DOWNLOAD": "1", **(env or {})})


def one_process_answers(run, out):
    """What tests/workers/ranks.py computes, in this process and on one thread (as each rank):
    torch's reductions may group sums differently with more threads."""
    spec = importlib.util.spec_from_file_location("ranks", WORKERS / "ranks.py")
    ranks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ranks)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return ranks.train_steps(distributed.World()), *ranks.scores(run, out)
    finally:
        torch.set_num_threads(threads)


def test_two_ranks_train_and_score_as_one_process(tmp_path, data_dir):
    run, two = tmp_path / "run", tmp_path / "two"
    train(TrainConfig(run_dir=str(run), epochs=1, train_size=200, hidden_dims=(32,), latent_dim=4,
                      eval_samples=0, data_dir=str(data_dir)), progress=False, log=lambda _: None)
    two.mkdir()
    # on the CPU, where one process and two give the same bits (and two ranks need no two GPUs)
    result = torchrun(str(WORKERS / "ranks.py"), str(two), str(run))
    assert result.returncode == 0, result.stderr[-2000:]
    (tmp_path / "one").mkdir()
    steps, importance, annealed = one_process_answers(run, tmp_path / "one")

    # training: two ranks at batch 16 take the steps of one process at batch 32
    shared = torch.load(two / "steps.pt")
    for key, value in steps["final"].items():
        assert torch.allclose(value, shared["final"][key], atol=1e-5), key
    assert max((steps["final"][k] - steps["initial"][k]).abs().max() for k in steps["final"]) > 1e-3  # it trained
    # scoring: the images dealt to the ranks, each batch seeded by its index, give the same numbers
    for one, path in ((importance, two / "is.json"), (annealed, two / "ais.json")):
        sharded = json.loads(path.read_text())
        assert sharded["processes"] == 2 and one["processes"] == 1
        assert one["per_image"] == sharded["per_image"], path.name
        assert len(one["per_image"]["log_px"]) == (230 if path.name == "is.json" else 30)
    assert importance["summary"] == json.loads((two / "is.json").read_text())["summary"]
    assert not (two / "ais.json").with_suffix(".parts").exists()


def test_a_failing_rank_fails_the_job_without_hanging():
    result = torchrun(str(WORKERS / "fail_rank.py"), timeout=180)
    assert result.returncode != 0
    assert "rank 1 failed on purpose" in result.stdout + result.stderr


def test_torchrun_train_writes_once_and_resumes(tmp_path, data_dir):
    run = tmp_path / "run"
    flags = ["-m", "pyro_vae.train", "--train-size", "400", "--batch-size", "50", "--hidden-dims", "32",
             "--latent-dim", "4", "--eval-samples", "0", "--no-progress", "--device", "cpu", "--run-dir", str(run)]
    first = torchrun(*flags, "--epochs", "1", env={"PYRO_VAE_DATA": str(data_dir)})
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.count("epoch 1/1") == 1  # rank 0 alone logs
    assert not (run / "eval_test_K10.json").exists()
    again = torchrun("-m", "pyro_vae.train", "--run-dir", str(run), "--resume", "--epochs", "2",
                     "--eval-samples", "10", "--no-progress", env={"PYRO_VAE_DATA": str(data_dir)})
    assert again.returncode == 0, again.stderr[-2000:]
    report = json.loads((run / "eval_test_K10.json").read_text())
    assert report["processes"] == 2 and len(report["per_image"]["log_px"]) == 10_000
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[2].startswith("2,800,")  # header, epoch 1, epoch 2: 400 images each


def test_more_ranks_than_gpus_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: pytest.fail(f"set_device({index}) called"))
    second_rank = distributed.World(rank=1, size=2, local_rank=1)
    with pytest.raises(ValueError, match="at most 1 per machine, or train on the CPU"):
        distributed.local_device(torch.device("cuda"), second_rank)
    assert distributed.local_device(torch.device("cpu"), second_rank) == torch.device("cpu")
