"""Fault injection: a full disk, a kill in the middle of a write, a lock left by a killed process.
Each leaves the last good state loadable and the run resumable."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from pyro_vae import runs
from pyro_vae.cli import train
from pyro_vae.runs import claim_run_dir, load_checkpoint, read_metrics, save_checkpoint
from tests.conftest import REPO
from tests.conftest import call
from tests.test_reliability import without_timing

pytestmark = pytest.mark.slow  # processes of their own: deselect with -m "not slow"

TINY = ["--train-size", "300", "--hidden-dims", "100", "--latent-dim", "5", "--eval-samples", "0",
        "--no-progress", "--seed", "3"]


class FillsUp:
    """A file whose writes fail with ENOSPC after ``room`` bytes, as on a full disk."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.file.write(data[:self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "weights": list(range(1000))})
    real_fdopen = os.fdopen
    monkeypatch.setattr(runs.os, "fdopen", lambda fd, *a, **k: FillsUp(real_fdopen(fd, *a, **k), room=100))
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"epoch": 2, "weights": list(range(1000))})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # the torn temporary is gone


def test_a_trainer_whose_disk_fills_up_stops_in_one_line_and_resumes(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("PYRO_VAE_DATA", str(data_dir))
    run = tmp_path / "run"
    assert call(train.main, ["--run-dir", str(run), "--epochs", "1", *TINY], capsys)[0] == 0
    first = load_checkpoint(run / "checkpoint.pt")
    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):  # the disk is full for checkpoints from now on
        file = real_fdopen(fd, *args, **kwargs)
        return FillsUp(file, room=1000) if ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}") else file

    monkeypatch.setattr(runs.os, "fdopen", fdopen)
    status, err = call(train.main, ["--run-dir", str(run), "--resume", "--epochs", "3", "--no-progress"], capsys)
    assert status == 1 and err.count("\n") == 1 and "No space left on device" in err, err
    assert "Traceback" not in err
    monkeypatch.undo()
    kept = load_checkpoint(run / "checkpoint.pt")
    assert kept["epoch"] == 1 and kept["history"] == first["history"]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setenv("PYRO_VAE_DATA", str(data_dir))
    status, err = call(train.main, ["--run-dir", str(run), "--resume", "--epochs", "3", "--no-progress"], capsys)
    assert status == 0, err
    assert [row["epoch"] for row in read_metrics(run / "metrics.csv")] == [1, 2, 3]


def test_a_real_full_disk_in_a_small_tmpfs(tmp_path, data_dir, monkeypatch, capsys):
    """The same on a real file system that fills up: a 3 MB tmpfs holds one checkpoint of this net
    (about 1.9 MB) but not a second beside it. Needs a private mount namespace (root)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a small tmpfs")
    disk, saved = tmp_path / "disk", tmp_path / "saved"
    disk.mkdir()
    script = textwrap.dedent(f"""
        mount -t tmpfs -o size=3m tmpfs {disk} || exit 99
        {sys.executable} -m pyro_vae.train --run-dir {disk}/run --epochs 3 {' '.join(TINY)} 2> {tmp_path}/err
        echo $? > {tmp_path}/status
        cp -a {disk}/run {saved}
    """)
    env = {**os.environ, "PYRO_VAE_DATA": str(data_dir), "PYRO_VAE_NO_DOWNLOAD": "1"}
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    if done.returncode == 99 or "unshare failed" in done.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:200]}")
    err = (tmp_path / "err").read_text()
    assert (tmp_path / "status").read_text().strip() == "1", err
    assert err.count("\n") == 1 and "No space left on device" in err, err
    assert load_checkpoint(saved / "checkpoint.pt")["epoch"] == 1
    assert not [p for p in saved.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setenv("PYRO_VAE_DATA", str(data_dir))
    status, err = call(train.main, ["--run-dir", str(saved), "--resume", "--no-progress"], capsys)
    assert status == 0, err
    assert [row["epoch"] for row in read_metrics(saved / "metrics.csv")] == [1, 2, 3]


def test_a_metrics_row_torn_by_a_kill_resumes_to_the_uninterrupted_metrics(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("PYRO_VAE_DATA", str(data_dir))
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert call(train.main, ["--run-dir", str(reference), "--epochs", "3", *TINY], capsys)[0] == 0
    assert call(train.main, ["--run-dir", str(run), "--epochs", "2", *TINY], capsys)[0] == 0
    # a SIGKILL inside the append of epoch 2's row (which follows epoch 2's checkpoint): half a row
    text = (run / "metrics.csv").read_text()
    last_row = text.rstrip("\n").rsplit("\n", 1)[1]
    (run / "metrics.csv").write_text(text[:len(text) - len(last_row) // 2 - 1])
    status, err = call(train.main, ["--run-dir", str(run), "--resume", "--epochs", "3", "--no-progress"], capsys)
    assert status == 0, err
    assert without_timing(read_metrics(run / "metrics.csv")) == without_timing(read_metrics(reference / "metrics.csv"))


KILL_WHILE_HOLDING = textwrap.dedent("""
    import os, signal, sys
    from pyro_vae.runs import claim_run_dir
    with claim_run_dir(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_lock_left_by_a_killed_process_does_not_block_the_next_writer(tmp_path):
    # (test_reliability kills a real trainer, which holds this lock, and resumes it)
    run = tmp_path / "run"
    killed = subprocess.Popen([sys.executable, "-c", KILL_WHILE_HOLDING, str(run)], cwd=REPO)
    assert killed.wait(timeout=120) == -signal.SIGKILL
    assert (run / runs.LOCK_FILE).read_text().strip() == str(killed.pid)  # the dead holder's lock file
    with claim_run_dir(run):
        assert (run / runs.LOCK_FILE).read_text().strip() == str(os.getpid())
