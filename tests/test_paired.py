"""The paired comparison of two evaluations: the per-image difference's mean and standard error."""

import json
import math

import pytest

from pyro_vae.paired_scores import paired_differences
from tests.conftest import run_cli


def report(log_px, elbo, num_images=None, split="test", **settings):
    return {"settings": {"dataset": "mnist", "binarize": "dynamic", "split": split,
                         "num_images": num_images or len(log_px), "num_samples": 10, **settings},
            "per_image": {"log_px": log_px, "elbo": elbo}}


def test_the_difference_and_its_standard_error_are_those_of_the_per_image_differences():
    a = report([-80.0, -100.0, -60.0, -120.0], [-90.0, -110.0, -70.0, -130.0])
    b = report([-79.9, -99.7, -59.9, -119.7], [-90.0, -110.0, -70.0, -130.0])
    table = paired_differences(a, b)
    # differences 0.1, 0.3, 0.1, 0.3: mean 0.2, sample std 0.2/sqrt(3), s.e. that over sqrt(4)
    assert table["log_px"]["difference"] == pytest.approx(0.2)
    assert table["log_px"]["stderr"] == pytest.approx(0.2 / math.sqrt(3) / 2)
    assert (table["log_px"]["a"], table["log_px"]["b"]) == (pytest.approx(-90.0), pytest.approx(-89.8))
    # over images the scores spread by tens of nats; the paired error is far below it
    assert table["log_px"]["stderr"] < 0.1
    assert table["elbo"]["difference"] == 0 and table["elbo"]["stderr"] == 0
    assert "iwae" not in table  # only the scores both files hold


def test_evaluations_of_different_images_are_refused():
    a = report([-80.0, -90.0], [-85.0, -95.0])
    with pytest.raises(ValueError, match="different images: split 'test' against 'valid'"):
        paired_differences(a, report([-80.0, -90.0], [-85.0, -95.0], split="valid"))
    with pytest.raises(ValueError, match="num_images 2 against 3"):
        paired_differences(a, report([-80.0, -90.0, -70.0], [-85.0, -95.0, -75.0]))


def test_the_command_prints_the_table_and_refuses_a_bad_file_in_one_line(tmp_path, capsys):
    from pyro_vae.cli import paired
    from tests.conftest import call

    first, second, broken = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "broken.json"
    first.write_text(json.dumps(report([-80.0, -100.0], [-90.0, -110.0], run_dir="runs/a")))
    second.write_text(json.dumps(report([-79.0, -99.5], [-90.0, -110.0], run_dir="runs/b", seed=1)))
    broken.write_text("{not json")
    result = run_cli("pyro_vae.paired", str(first), str(second))
    assert result.returncode == 0, result.stderr
    assert "runs/a" in result.stdout and "runs/b (IS K=10, seed 1," in result.stdout
    assert "+0.750" in result.stdout  # log p(x): differences 1.0 and 0.5
    status, err = call(paired.main, [str(first), str(broken)], capsys)  # in-process: no second start-up
    assert status == 2 and err.count("\n") == 1
    assert "is not an evaluation written by pyro_vae.evaluate" in err
    status, err = call(paired.main, [str(first), str(tmp_path / "missing.json")], capsys)
    assert status == 2 and "no such file" in err


def test_an_ais_report_pairs_with_an_importance_sampling_one():
    from pyro_vae.paired_scores import format_table

    a = report([-80.0, -90.0], [-85.0, -95.0])
    b = {"settings": {**a["settings"], "method": "ais", "num_chains": 16, "num_steps": 100, "init": "guide"},
         "per_image": {"log_px": [-79.5, -89.0], "acceptance": [0.6, 0.7]}}
    table = paired_differences(a, b)
    assert set(table) == {"log_px"} and table["log_px"]["difference"] == pytest.approx(0.75)
    text = format_table(table, a, b)
    assert "IS K=10" in text and "AIS 16 chains x T=100 from the guide" in text
