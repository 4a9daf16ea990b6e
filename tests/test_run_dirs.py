"""A run directory is written only by the command that names it, by one writer at a time, after
checks that come before any work; recipes refuse flags they do not honour and changed settings."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pyro_vae.cli import evaluate, experiments, train
from pyro_vae.evaluation import format_summary
from pyro_vae.marginal import low_ess_threshold, summarize
from pyro_vae.runs import LOCK_FILE, claim_run_dir, load_checkpoint, read_metrics
from pyro_vae.trainer import TrainConfig
from pyro_vae.trainer import train as train_run
from tests.conftest import REPO
from tests.conftest import call

TINY = ["--train-size", "200", "--hidden-dims", "16", "--latent-dim", "2", "--eval-samples", "0",
        "--no-progress"]
MISSING_DATA = ["--data-dir", "/nonexistent/data"]  # fails when the data is read: anything else is earlier


def tree_state(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


@pytest.fixture
def tiny_run(tmp_path, data_dir) -> Path:
    run = tmp_path / "run"
    train_run(TrainConfig(run_dir=str(run), epochs=1, train_size=200, hidden_dims=(16,), latent_dim=2,
                          eval_samples=0, data_dir=str(data_dir)), progress=False, log=lambda _: None)
    return run


def test_resuming_a_copy_extends_the_copy_and_leaves_the_original_alone(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYRO_VAE_DATA", str(data_dir))
    assert call(train.main, ["--run-dir", "original", "--epochs", "1", *TINY], capsys)[0] == 0
    original = tree_state(tmp_path / "original")
    shutil.copytree("original", "elsewhere/copy")
    status, err = call(train.main, ["--run-dir", "elsewhere/copy", "--resume", "--epochs", "2", "--no-progress"],
                       capsys)
    assert status == 0, err
    assert tree_state(tmp_path / "original") == original  # not one byte of the original changed
    assert load_checkpoint(tmp_path / "elsewhere/copy/checkpoint.pt")["epoch"] == 2
    assert len(read_metrics(tmp_path / "elsewhere/copy/metrics.csv")) == 2
    assert json.loads((tmp_path / "elsewhere/copy/config.json").read_text())["run_dir"] == "elsewhere/copy"
    # and from a folder where the original's relative path does not exist
    monkeypatch.chdir(tmp_path / "elsewhere")
    status, err = call(train.main, ["--run-dir", "copy", "--resume", "--epochs", "3", "--no-progress"], capsys)
    assert status == 0, err
    assert load_checkpoint(tmp_path / "elsewhere/copy/checkpoint.pt")["epoch"] == 3


HOLD = textwrap.dedent("""
    import sys, time
    from pyro_vae.runs import claim_run_dir
    with claim_run_dir(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
""")


def hold_lock(run: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_gets_one_line_naming_the_holder_before_the_data_is_read(tmp_path, capsys):
    run = tmp_path / "run"
    holder = hold_lock(run)
    try:
        for main, argv in ((train.main, ["--run-dir", str(run), *TINY, *MISSING_DATA]),
                           (evaluate.main, [str(run), *MISSING_DATA]),
                           (experiments.main, ["figures", str(run)])):
            status, err = call(main, argv, capsys)
            assert status == 2 and err.count("\n") == 1, err
            assert f"PID {holder.pid}" in err and "being written by another process" in err
    finally:
        holder.kill()
        holder.wait()
    # the OS released the killed holder's lock: the directory is free again
    with claim_run_dir(run):
        pass


def test_two_trainers_started_together_leave_one_consistent_run(tmp_path, data_dir):
    run = tmp_path / "run"
    env = {**os.environ, "PYRO_VAE_DATA": str(data_dir), "PYRO_VAE_NO_DOWNLOAD": "1"}
    flags = ["-m", "pyro_vae.train", "--run-dir", str(run), "--epochs", "2", *TINY]
    processes = [subprocess.Popen([sys.executable, *flags, "--seed", str(seed)], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "being written by another process" in refused or "already holds a run" in refused
    winner = 1 + [code for code, _ in results].index(0)
    assert json.loads((run / "config.json").read_text())["seed"] == winner
    assert load_checkpoint(run / "checkpoint.pt")["config"]["seed"] == winner
    assert [row["epoch"] for row in read_metrics(run / "metrics.csv")] == [1, 2]


def test_a_run_dir_that_is_a_file_is_one_line_before_the_data_is_read(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    for main, argv in ((train.main, ["--run-dir", str(path), *TINY, *MISSING_DATA]),
                       (train.main, ["--run-dir", str(path), "--resume"])):
        status, err = call(main, argv, capsys)
        assert status == 2 and err.count("\n") == 1 and "is a file" in err, err
    assert path.read_text() == "mine"


def without_write_permission() -> list[str]:
    """A command prefix under which file modes bind: root overrides them unless its capability
    to do so is dropped (setpriv); an ordinary user needs nothing."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file modes cannot be made to bind")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]


DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys
    from pyro_vae.cli import evaluate, experiments, train
    from pyro_vae.cli import run_main
    results = []
    for module, argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                run_main({"train": train, "evaluate": evaluate, "experiments": experiments}[module].main, argv)
                code = 0
            except SystemExit as stop:
                code = stop.code
        results.append([code, err.getvalue()])
    print(json.dumps(results))
""")


def run_unprivileged(cases: list, data_dir: Path) -> list:
    """Run several command lines in one unprivileged process (one start-up); [exit status, stderr] each."""
    env = {**os.environ, "PYRO_VAE_DATA": str(data_dir), "PYRO_VAE_NO_DOWNLOAD": "1"}
    result = subprocess.run([*without_write_permission(), sys.executable, "-c", DRIVER, json.dumps(cases)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_unwritable_places_are_one_line_before_any_work(tiny_run, tmp_path, data_dir):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    before = tree_state(tiny_run)
    out = tmp_path / "scores" / "score.json"
    read_only.chmod(0o555)
    tiny_run.chmod(0o555)
    try:
        refused = [["train", ["--run-dir", str(read_only / "run"), *TINY, *MISSING_DATA]],
                   ["evaluate", [str(tiny_run), "-K", "2", *MISSING_DATA]],
                   ["experiments", ["figures", str(tiny_run), *MISSING_DATA]],
                   ["experiments", ["paper-figure", str(tiny_run), "--out", str(read_only / "f.png")]],
                   ["experiments", ["manifold", "--out", str(read_only), *MISSING_DATA]]]
        # the score of a run that cannot be written goes where --out says
        scored = ["evaluate", [str(tiny_run), "-K", "2", "--limit", "5", "--out", str(out), "--no-progress"]]
        *results, (scored_status, scored_err) = run_unprivileged([*refused, scored], data_dir)
    finally:
        read_only.chmod(0o755)
        tiny_run.chmod(0o755)
    for case, (status, err) in zip(refused, results):
        assert status == 2 and err.count("\n") == 1 and "cannot write in" in err, (case, err)
    assert scored_status == 0, scored_err
    assert len(json.loads(out.read_text())["per_image"]["log_px"]) == 5
    assert tree_state(tiny_run) == before
    assert list(read_only.iterdir()) == []


def test_a_report_that_cannot_be_written_at_the_end_is_kept_elsewhere(tiny_run, monkeypatch, capsys):
    from pyro_vae import runs

    real_write_json = runs.write_json

    def fail_in_the_run(path, obj):
        if Path(path).parent == tiny_run:
            raise OSError(28, "No space left on device", str(path))
        real_write_json(path, obj)

    monkeypatch.setattr(runs, "write_json", fail_in_the_run)
    status, err = call(evaluate.main, [str(tiny_run), "-K", "2", "--limit", "4", "--no-progress"], capsys)
    assert status == 1 and err.count("\n") == 1, err
    kept = Path(err.split("the report was written to ")[1].strip())
    try:
        assert len(json.loads(kept.read_text())["per_image"]["log_px"]) == 4
    finally:
        kept.unlink()


def test_log_px_does_not_depend_on_the_iwae_grouping_and_each_setting_has_its_own_file(tiny_run, capsys):
    base = [str(tiny_run), "-K", "10", "--limit", "20", "--no-progress"]
    assert call(evaluate.main, base, capsys)[0] == 0
    assert call(evaluate.main, [*base, "--iwae-k", "7"], capsys)[0] == 0
    assert call(evaluate.main, [*base, "--batch-size", "7"], capsys)[0] == 0
    plain = json.loads((tiny_run / "eval_test_K10_first20.json").read_text())
    grouped = json.loads((tiny_run / "eval_test_K10_first20_iwae7.json").read_text())
    rebatched = json.loads((tiny_run / "eval_test_K10_first20_b7.json").read_text())
    assert grouped["per_image"]["log_px"] == plain["per_image"]["log_px"]
    assert grouped["per_image"]["elbo"] == plain["per_image"]["elbo"]
    assert grouped["per_image"]["iwae"] != plain["per_image"]["iwae"]
    assert rebatched["per_image"]["log_px"] != plain["per_image"]["log_px"]  # other chunks, other draws


def test_the_low_ess_warning_can_fire_at_any_k_and_says_its_threshold():
    assert low_ess_threshold(10) == 5 and low_ess_threshold(100) == 5 and low_ess_threshold(5000) == 50
    per_image = {name: torch.zeros(4, dtype=torch.float64) for name in ("log_px", "iwae", "elbo")}
    per_image["ess"] = torch.tensor([1.0, 2.0, 4.9, 9.0], dtype=torch.float64)
    summary = summarize(per_image, 10)
    assert summary["ess_low_fraction"] == 0.75 and summary["ess_low_threshold"] == 5
    settings = {"split": "test", "num_images": 4, "num_samples": 10, "iwae_k": 10, "binarize": "dynamic"}
    text = format_summary({"summary": summary, "settings": settings, "seconds": 0.1})
    assert "ESS < 5 (the floor of 5" in text and "75.0%" in text and "warning" in text
    summary = summarize({**per_image, "ess": torch.full((4,), 40.0, dtype=torch.float64)}, 5000)
    assert summary["ess_low_fraction"] == 1.0
    report = {"summary": summary, "settings": {**settings, "num_samples": 5000}, "seconds": 0.1}
    assert "ESS < 50 (1% of K)" in format_summary(report)


@pytest.mark.parametrize("flag", [["--dataset", "fashion-mnist"], ["--binarize", "none"], ["--hidden-dims", "10"]])
def test_paper_does_not_list_the_settings_it_fixes(flag, capsys):
    status, err = call(experiments.main, ["paper", *flag], capsys)
    assert status == 2 and "unrecognized arguments" in err, err


PAPER = ["paper", "--epochs", "1", "--eval-samples", "0", "--curve-samples", "0", "--no-progress"]


def test_a_rerun_recipe_refuses_a_changed_setting_before_the_data_is_read(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("PYRO_VAE_DATA", str(data_dir))
    out = ["--out", str(tmp_path)]
    assert call(experiments.main, [*PAPER, *out, "--train-size", "200"], capsys)[0] == 0
    run = tmp_path / "paper-trace-L1-1ep"
    before = tree_state(run)
    for change, message in ((["--train-size", "300"], "train_size = 200, not 300"),
                            (["--train-size", "200", "--seed", "5"], "seed = 0, not 5"),
                            (["--train-size", "200", "--lr", "0.002"], "lr = 0.001, not 0.002")):
        status, err = call(experiments.main, [*PAPER, *out, *MISSING_DATA, *change], capsys)
        assert status == 2 and err.count("\n") == 1 and message in err, err
    assert tree_state(run) == before


MANIFOLD = ["manifold", "--train-size", "200", "--hidden-dims", "16", "--grid-size", "3", "--no-progress"]


def test_manifold_rerun_reuses_only_the_same_model_and_refuses_flags_it_would_ignore(tmp_path, data_dir,
                                                                                     monkeypatch, capsys):
    monkeypatch.setenv("PYRO_VAE_DATA", str(data_dir))
    out = ["--out", str(tmp_path), "--epochs", "1"]
    assert call(experiments.main, [*MANIFOLD, *out], capsys)[0] == 0
    run = tmp_path / "manifold-mnist-J2"
    checkpoint = (run / "checkpoint.pt").read_bytes()
    status, err = call(experiments.main, [*MANIFOLD, "--out", str(tmp_path), "--epochs", "2"], capsys)
    assert status == 2 and "epochs = 1, not 2" in err, err
    assert call(experiments.main, [*MANIFOLD, *out], capsys)[0] == 0  # the same settings: redrawn only
    assert (run / "checkpoint.pt").read_bytes() == checkpoint
    status, err = call(experiments.main, ["manifold", "--run-dir", str(run), "--epochs", "3"], capsys)
    assert status == 2 and "--epochs sets up the run manifold trains" in err, err


def test_latent_sweep_refuses_a_changed_setting_of_an_earlier_run(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("PYRO_VAE_DATA", str(data_dir))
    sweep = ["latent-sweep", "--latent-dims", "2", "--epochs", "1", "--train-size", "200", "--hidden-dims", "16",
             "--eval-samples", "0", "--no-progress", "--out", str(tmp_path)]
    assert call(experiments.main, sweep, capsys)[0] == 0
    status, err = call(experiments.main, [*sweep, "--hidden-dims", "24", *MISSING_DATA], capsys)  # before the data
    assert status == 2 and "hidden_dims" in err and "24" in err, err
    status, err = call(experiments.main, [*sweep[:-1], str(tmp_path), "--dataset", "fashion"], capsys)
    assert status == 2 and "--dataset" in err, err
    # the earlier run is intact and still extends with more epochs
    assert call(experiments.main, [*sweep[:4], "2", *sweep[5:]], capsys)[0] == 0
    assert load_checkpoint(tmp_path / "latent_sweep" / "J2-adam" / "checkpoint.pt")["epoch"] == 2


def test_an_exported_run_loads_and_scores_as_the_run_and_cannot_be_resumed(tiny_run, tmp_path, capsys):
    """experiments export: the weights the run is scored by, and nothing to resume from."""
    import torch

    from pyro_vae import load_run

    out = tmp_path / "exported"
    base = ["-K", "3", "--limit", "20", "--no-progress"]
    assert call(evaluate.main, [str(tiny_run), *base, "--out", str(tiny_run / "eval_test_K5000.json")], capsys)[0] == 0
    assert call(experiments.main, ["export", str(tiny_run), str(out)], capsys)[0] == 0
    assert (out / "eval_test_K5000.json").exists() and not (out / "checkpoint.pt").exists()
    assert (out / "model.pt").stat().st_size < 0.6 * (tiny_run / "checkpoint.pt").stat().st_size
    for a, b in zip(load_run(tiny_run).state_dict().values(), load_run(out).state_dict().values()):
        assert torch.equal(a, b)
    assert call(evaluate.main, [str(out), *base, "--out", str(tmp_path / "again.json")], capsys)[0] == 0
    scores = [json.loads(path.read_text())["per_image"]
              for path in (out / "eval_test_K5000.json", tmp_path / "again.json")]
    assert scores[0] == scores[1]  # the same weights, samples and images: the same numbers
    status, err = call(train.main, ["--run-dir", str(out), "--resume", "--no-progress"], capsys)
    assert status == 2 and "no checkpoint" in err, err
    (tiny_run / "reconstructions.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # a figure to copy, or not
    for flags, copy in (([], tmp_path / "with-figures"), (["--no-figures"], tmp_path / "without-figures")):
        assert call(experiments.main, ["export", str(tiny_run), str(copy), *flags], capsys)[0] == 0
        assert (copy / "model.pt").is_file() and (copy / "eval_test_K5000.json").is_file()
        assert [p.name for p in copy.glob("*.png")] == ([] if flags else ["reconstructions.png"])
    status, err = call(experiments.main, ["export", str(tmp_path / "nothing"), str(tmp_path / "x")], capsys)
    assert status == 2, err
