"""``pyro-vae evaluate --method ais`` and ``--bdmc N`` on the committed IWAE model: reports named by
their settings, importance sampling beside AIS, a resumed evaluation that gives the uninterrupted
numbers without recomputing finished batches, and refusals of flags and stale parts."""

import json
import shutil

import pytest

from pyro_vae import ais, evaluation_ais
from pyro_vae.cli import evaluate
from tests.conftest import REPO, call

MODEL = REPO / "results" / "paper-iwae-k5-7000ep-equal600-ema0.9999"
FAST = ["--limit", "6", "--batch-size", "2", "--ais-steps", "3", "--chains", "4", "--leapfrog-steps", "2",
        "--no-progress"]


@pytest.fixture
def run(tmp_path, data_dir, monkeypatch):
    """A copy of the committed model with its K = 5000 importance-sampling score."""
    monkeypatch.setenv("PYRO_VAE_DATA", str(data_dir))
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("config.json", "model.pt", "eval_test_K5000.json"):
        shutil.copy(MODEL / name, folder / name)
    return folder


def test_ais_report_is_named_by_its_settings_and_sets_importance_sampling_beside_it(run, capsys):
    status, err = call(evaluate.main, [str(run), "--method", "ais", *FAST], capsys)
    assert status == 0, err
    path = run / "eval_test_ais_C4_T3_guide_L2_b2_first6.json"
    report = json.loads(path.read_text())
    assert report["settings"]["method"] == "ais" and len(report["per_image"]["log_px"]) == 6
    beside = report["importance_sampling"]
    is_scores = json.loads((run / "eval_test_K5000.json").read_text())["per_image"]["log_px"][:6]
    assert beside["num_samples"] == 5000 and beside["log_px_mean"] == pytest.approx(sum(is_scores) / 6)
    ais_mean = report["summary"]["log_px_mean"]
    assert beside["ais_minus_is"] == pytest.approx(ais_mean - sum(is_scores) / 6)
    assert not path.with_suffix(".parts").exists()  # the finished batches go once the report is written


def test_an_interrupted_evaluation_resumes_with_the_uninterrupted_numbers(run, monkeypatch, capsys):
    status, err = call(evaluate.main, [str(run), "--method", "ais", *FAST, "--out", str(run / "whole.json")],
                       capsys)
    assert status == 0, err
    whole = json.loads((run / "whole.json").read_text())

    ran, save = [], evaluation_ais.Parts.save

    def counted(*args, **kwargs):
        ran.append(args)
        return ais_batch(*args, **kwargs)
    ais_batch = ais.ais_batch
    monkeypatch.setattr(ais, "ais_batch", counted)

    def save_then_stop(self, direction, index, result):
        save(self, direction, index, result)
        if index == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(evaluation_ais.Parts, "save", save_then_stop)
    out = run / "resumed.json"
    status, _ = call(evaluate.main, [str(run), "--method", "ais", *FAST, "--out", str(out)], capsys)
    assert status == 130 and not out.exists() and len(ran) == 2
    assert sorted(p.name for p in out.with_suffix(".parts").iterdir()) == ["forward-000000.pt", "forward-000001.pt"]

    monkeypatch.setattr(evaluation_ais.Parts, "save", save)
    status, err = call(evaluate.main, [str(run), "--method", "ais", *FAST, "--out", str(out)], capsys)
    assert status == 0, err
    assert len(ran) == 3  # only the third batch ran again
    resumed = json.loads(out.read_text())
    assert resumed["per_image"] == whole["per_image"] and not out.with_suffix(".parts").exists()


def test_parts_of_another_model_are_refused(run, capsys):
    stale = run / "eval_test_ais_C4_T3_guide_L2_b2_first6.parts"
    evaluation_ais.Parts(stale, "another model").save("forward", 0, {})
    status, err = call(evaluate.main, [str(run), "--method", "ais", *FAST], capsys)
    assert status == 2 and "computed for another model or other settings" in err and str(stale) in err, err
    assert (stale / "forward-000000.pt").exists()  # never removed on its own


def test_bdmc_report_holds_both_bounds(run, capsys):
    status, err = call(evaluate.main, [str(run), "--bdmc", "4", "--batch-size", "2", "--ais-steps", "3",
                                       "--chains", "4", "--leapfrog-steps", "2", "--no-progress"], capsys)
    assert status == 0, err
    report = json.loads((run / "eval_bdmc_N4_C4_T3_guide_L2_b2.json").read_text())
    lower, upper = report["per_item"]["lower"], report["per_item"]["upper"]
    assert len(lower) == len(upper) == 4
    assert report["summary"]["gap_mean"] == pytest.approx(sum(u - v for u, v in zip(upper, lower)) / 4)


@pytest.mark.parametrize("argv,message", [
    (["--chains", "4"], "--chains is a setting of --method ais or --bdmc"),
    (["--method", "ais", "--num-samples", "10"], "--num-samples is a setting of --method is"),
    (["--bdmc", "4", "--method", "ais"], "give it without --method ais"),
    (["--bdmc", "4", "--limit", "3"], "--limit and --split do not apply"),
    (["--method", "mcmc"], "--method"),
])
def test_bad_annealed_flags_give_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    status, err = call(evaluate.main, [str(tmp_path / "run"), *argv], capsys)
    assert status == 2 and err.count("\n") == 1 and message in err, err


def test_overwriting_a_run_removes_the_parts_of_its_old_evaluations(tmp_path):
    from pyro_vae import runs

    (tmp_path / "eval_test_K5.json").write_text("{}")
    evaluation_ais.Parts(tmp_path / "eval_test_ais_C4_T3_guide.parts", "old model").save("forward", 0, {})
    (tmp_path / "notes.txt").write_text("the user's own file")
    runs.clear_run_outputs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
