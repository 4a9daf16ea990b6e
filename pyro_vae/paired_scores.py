"""Compare two evaluations image by image: ``python -m pyro_vae.paired A.json B.json``.

Most of an image's score is the image itself (a 1 is far likelier than an 8), so the standard
error of a test NLL over images, about a quarter of a nat on MNIST, hides the tenths of a nat
between two models, two checkpoints or two K. Scored on the same images, the per-image
difference d_i = s_B(x_i) - s_A(x_i) cancels that: its mean is the difference of the two scores
and std(d) / sqrt(n) its standard error, usually tens of times smaller. Positive means B scores
higher (higher log p(x), a tighter bound: better).

A and B are ``eval_<split>_K<K>*.json`` (importance sampling) or ``eval_<split>_ais_*.json``
(annealed importance sampling) files written by ``pyro_vae.evaluate``; they must score the same
images (data set, binarization, split and count), by any method, K, seed or weights. Two draws of
a dynamically binarized test set (``--binarization-seed``) count as the same images binarized
again: then the mean difference is what the draw moves, and the paired s.e. / sqrt(2) the spread
of one draw's score.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .marginal import mean_and_stderr

SCORES = {"log_px": "log p(x)", "iwae": "IWAE bound", "elbo": "ELBO"}
SAME_IMAGES = ("dataset", "binarize", "split", "num_images")


def load_evaluation(path: str | Path) -> dict:
    """An evaluation JSON, or a ValueError saying why it is not one."""
    try:
        report = json.loads(Path(path).read_text())
        report["settings"], report["per_image"]["log_px"]  # raise KeyError if it is not one
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not an evaluation written by pyro_vae.evaluate ({error})") from None
    return report


def paired_differences(a: dict, b: dict) -> dict[str, dict[str, float]]:
    """For each score both reports hold: A's mean, B's mean, and mean(B - A) with its standard error."""
    for key in SAME_IMAGES:
        if a["settings"].get(key) != b["settings"].get(key):
            raise ValueError(f"the two evaluations score different images: {key} "
                             f"{a['settings'].get(key)!r} against {b['settings'].get(key)!r}")
    table = {}
    for score in SCORES:
        if score not in a["per_image"] or score not in b["per_image"]:
            continue
        x, y = (torch.tensor(r["per_image"][score], dtype=torch.float64) for r in (a, b))
        difference, stderr = mean_and_stderr(y - x)
        table[score] = {"a": x.mean().item(), "b": y.mean().item(), "difference": difference,
                        "stderr": stderr}
    return table


def format_table(table: dict[str, dict[str, float]], a: dict, b: dict) -> str:
    def label(report: dict) -> str:
        s = report["settings"]
        draw = f", binarization draw {s['binarization_seed']}" if s.get("binarization_seed") else ""
        method = (f"AIS {s['num_chains']} chains x T={s['num_steps']} from the {s['init']}"
                  if s.get("method") == "ais" else f"IS K={s.get('num_samples')}")
        weights = s.get("weights", "last")
        return f"{s.get('run_dir', '?')} ({method}, seed {s.get('seed', '?')}, {weights} weights{draw})"

    lines = [f"A: {label(a)}", f"B: {label(b)}",
             f"{a['settings']['num_images']} {a['settings']['split']} images; nats per image",
             f"{'score':<16}{'A':>11}{'B':>11}{'B - A':>11}   paired s.e."]
    for score, row in table.items():
        lines.append(f"{SCORES[score]:<16}{row['a']:11.3f}{row['b']:11.3f}{row['difference']:+11.3f}"
                     f"   {row['stderr']:.3f}")
    return "\n".join(lines)
