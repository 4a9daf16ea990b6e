"""Command lines end to end, and their one-line errors for bad input."""

import json

import pytest

from pyro_vae.cli import evaluate, train
from pyro_vae.runs import read_metrics
from tests.conftest import call, run_cli


def test_train_end_to_end_writes_the_run(data_dir, tmp_path):
    run = tmp_path / "run"
    # the README's command with fewer images and a narrower net (the test set is scored in full)
    result = run_cli("pyro_vae.train", "--num-particles", "1", "--epochs", "1", "--train-size", "2000",
                     "--hidden-dims", "100", "--eval-samples", "20", "--run-dir", str(run),
                     env={"PYRO_VAE_DATA": str(data_dir)})
    assert result.returncode == 0, result.stderr
    for name in ("metrics.csv", "config.json", "checkpoint.pt", "learning_curves.png",
                 "reconstructions.png", "prior_samples.png", "eval_test_K20.json"):
        assert (run / name).stat().st_size > 0, name
    (row,) = read_metrics(run / "metrics.csv")
    assert {"epoch", "train_elbo", "valid_elbo", "test_elbo", "epoch_seconds"} <= set(row)
    assert -400 < row["test_elbo"] < -100  # grey-level MNIST after one short epoch
    config = json.loads((run / "config.json").read_text())
    assert config["num_particles"] == 1 and config["binarize"] == "none" and "torch" in config["versions"]
    report = json.loads((run / "eval_test_K20.json").read_text())
    assert report["summary"]["elbo_mean"] <= report["summary"]["log_px_mean"]
    assert len(report["per_image"]["log_px"]) == 10_000
    assert "log p(x)" in result.stdout


@pytest.mark.parametrize("flags,message", [
    (["--num-particles", "0"], "--num-particles"),
    (["--dataset", "cifar10"], "--dataset"),
    (["--epochs", "-1"], "--epochs"),
    (["--elbo", "nope"], "--elbo"),
    (["--lr", "abc"], "--lr"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--ema-decay", "1"], "ema_decay must be in [0, 1)"),
    (["--batch-size", "5000", "--train-size", "100"], "larger than"),
    (["--data-dir", "/nonexistent/data"], "not a directory"),
    (["--binarize", "dynamic", "--dataset", "binarized-mnist"], "already binary"),
    (["--resume"], "--run-dir"),
    (["--beta", "0.5"], "--beta applies only to --elbo ciwae"),
    (["--elbo", "ciwae", "--beta", "2"], "--elbo ciwae: beta must be a number in [0, 1]"),
    (["--elbo", "renyi", "--alpha", "1"], "alpha = 1 is the ordinary ELBO"),
    (["--elbo", "piwae", "--num-particles", "1"], "--elbo piwae needs --num-estimates M"),
    (["--elbo", "iwae", "--num-estimates", "2"], "--num-estimates applies only to --elbo miwae and piwae"),
    (["--jit"], "use --compile"),
])
def test_bad_train_flags_give_one_line_and_exit_2(flags, message, tmp_path, capsys, data_dir,
                                                  monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA", str(data_dir))
    monkeypatch.setenv("PYRO_VAE_NO_DOWNLOAD", "1")
    run = tmp_path / "run"
    status, err = call(train.main, [*flags, "--run-dir", str(run)] if "--resume" not in flags else flags, capsys)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error:") and message in err, err
    assert "Traceback" not in err
    assert not run.exists()  # nothing written


def test_bad_flag_in_a_fresh_process_has_no_traceback(tmp_path):
    result = run_cli("pyro_vae.train", "--num-particles", "0", "--run-dir", str(tmp_path / "r"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("argv,message", [
    (["{missing}"], "not a directory"),
    (["{empty}"], "no checkpoint"),
    (["{empty}", "--num-samples", "0"], "--num-samples"),
    (["{empty}", "--split", "train2"], "--split"),
    (["{empty}", "--weights", "best"], "--weights"),
])
def test_bad_evaluate_input(argv, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = [a.format(missing=tmp_path / "missing", empty=tmp_path / "empty") for a in argv]
    status, err = call(evaluate.main, argv, capsys)
    assert status == 2 and err.count("\n") == 1 and message in err, err


def test_the_console_script_lists_and_dispatches_the_commands(capsys):
    from pyro_vae.cli import COMMANDS, dispatch

    with pytest.raises(SystemExit) as exit_info:
        dispatch(["--help"])
    assert exit_info.value.code == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("train", "evaluate", "compare", "paired", "experiments"))
    for argv, message in ((["bogus"], "unknown command 'bogus'"),
                          (["evaluate", "/nonexistent/run"], "not a directory")):
        with pytest.raises(SystemExit) as exit_info:
            dispatch(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err
    assert set(COMMANDS) == {"train", "evaluate", "compare", "paired", "experiments"}


def test_version(capsys):
    import pyro_vae
    from pyro_vae.cli import dispatch

    with pytest.raises(SystemExit) as stop:
        dispatch(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"pyro-vae {pyro_vae.__version__}\n"
