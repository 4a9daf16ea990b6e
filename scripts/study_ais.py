"""The nine models of the estimator training study (docs/estimators.md section 2) re-scored by
annealed importance sampling (AIS), and the section "The same nine models scored by AIS" of
docs/estimators.md written from the reports.

    python scripts/study_ais.py --score [--jobs 2]   # export each trained run, then score it by AIS
    python scripts/study_ais.py [--no-write]         # only the table, from the reports

``--score`` needs the study's trained runs (``results/estimator-study/training/<run>/``, made by
the command of section 2). It exports each as a small weights-only folder into
``results/estimator-study/models/<run>/`` with its importance-sampling (IS) report, and runs
``python -m pyro_vae.evaluate <that folder> --method ais --limit 1000 --compile`` in it (a
finished report is kept; an interrupted one resumes). The table compares each model's AIS and
IS log p(x) on the same 1,000 test images, image by image, and every difference between two
estimators by both methods: a difference IS shows but AIS does not was a better proposal, not a
better model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ais_table import write_section
from pyro_vae import runs
from pyro_vae.comparison import FINISHED_FILE, Estimator
from pyro_vae.marginal import mean_and_stderr

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "results" / "estimator-study"
DOCS = ROOT / "docs" / "estimators.md"
MARKER = "<!-- study_ais.py writes below this line -->"
IS_REPORT = "eval_test_K5000_first1000_iwae64.json"
AIS_FLAGS = ["--method", "ais", "--limit", "1000", "--compile", "--no-progress"]
# pairs whose difference the study's prose discusses: (higher, lower)
PAIRS = [("meanfield", "trace"), ("stl", "trace"), ("stl", "meanfield"), ("iwae", "trace"), ("dreg", "iwae"),
         ("miwae", "iwae"), ("piwae", "iwae"), ("piwae", "miwae"), ("dreg", "piwae"), ("renyi", "iwae"),
         ("iwae", "ciwae")]


def study_runs(study: Path) -> list[dict]:
    """The study's rows in its table's order, each with the name of its run folder."""
    rows = json.loads((study / "training" / "comparison.json").read_text())["estimators"]
    for row in rows:
        row["run"] = Estimator(row["estimator"], row["particles"], row["estimates"]).run_name(row["budget"])
    return rows


def score(study: Path, row: dict) -> str:
    """Export one trained run (if not yet) and score it by AIS (if not yet); returns a line to print."""
    trained, exported = study / "training" / row["run"], study / "models" / row["run"]
    if not (exported / "model.pt").is_file():
        if not (trained / FINISHED_FILE).is_file():
            return f"{row['label']}: not trained and scored yet ({trained}), skipped"
        with runs.claim_run_dir(exported):  # as `python -m pyro_vae.experiments export ... --no-figures`
            runs.export_model(trained, exported, [IS_REPORT], figures=False)
    if not list(exported.glob("eval_test_ais_*_first1000.json")):
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        subprocess.run([sys.executable, "-m", "pyro_vae.evaluate", str(exported), *AIS_FLAGS],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    return f"{row['label']}: scored"


def per_image(folder: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """IS and AIS log p(x) of each of the 1,000 images, and the AIS report."""
    (ais_path,) = folder.glob("eval_test_ais_*_first1000.json")
    ais = json.loads(ais_path.read_text())
    importance = json.loads((folder / IS_REPORT).read_text())
    for key in ("dataset", "binarize", "binarization_seed", "split", "num_images"):
        assert importance["settings"][key] == ais["settings"][key], (folder, key)
    return (torch.tensor(importance["per_image"]["log_px"], dtype=torch.float64),
            torch.tensor(ais["per_image"]["log_px"], dtype=torch.float64), ais)


def table(study: Path) -> str:
    rows = study_runs(study)
    scores = {row["estimator"]: per_image(study / "models" / row["run"]) for row in rows}
    labels = {row["estimator"]: row["label"] for row in rows}
    first = rows[0]["estimator"]

    def paired(values: torch.Tensor) -> str:
        mean, stderr = mean_and_stderr(values)
        return f"{mean:+.2f} ± {stderr:.2f}"
    settings = scores[first][2]["settings"]
    lines = [f"| estimator | IS K = 5,000 | AIS T = {settings['num_steps']} | AIS − IS (paired) "
             f"| IS minus {labels[first]} (paired) | AIS minus {labels[first]} (paired) | AIS acceptance "
             "| AIS seconds |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base_is, base_ais, _ = scores[first]
    for row in rows:
        importance, ais, report = scores[row["estimator"]]
        same = row["estimator"] == first
        lines.append(f"| {row['label']} | {importance.mean():.2f} | {ais.mean():.2f} | {paired(ais - importance)} "
                     f"| {'' if same else paired(importance - base_is)} | {'' if same else paired(ais - base_ais)} "
                     f"| {report['summary']['acceptance_mean']:.2f} | {report['seconds']:,.0f} |")
    pairs = ["| difference | by IS (paired) | by AIS (paired) | AIS minus IS: the proposal's share (paired) |",
             "|---|---:|---:|---:|"]
    for a, b in PAIRS:
        (is_a, ais_a, _), (is_b, ais_b, _) = scores[a], scores[b]
        pairs.append(f"| {labels[a]} − {labels[b]} | {paired(is_a - is_b)} | {paired(ais_a - ais_b)} "
                     f"| {paired((ais_a - ais_b) - (is_a - is_b))} |")

    def ranking(index: int) -> str:
        order = sorted(scores, key=lambda name: -scores[name][index].mean().item())
        return " > ".join(order)
    body = "\n".join(lines) + "\n\n" + "\n".join(pairs) + "\n\n"
    body += f"Ranked by IS: {ranking(0)}.  \nRanked by AIS: {ranking(1)}.\n\n"
    body += (f"AIS from the guide, {settings['num_chains']} chains, T = {settings['num_steps']} densities, "
             f"{settings['leapfrog_steps']} leapfrog steps, on the same first 1,000 test images (the same "
             "binarization) as the IS scores. "
             "The models and both reports of each are in `results/estimator-study/models/`; the commands:\n\n"
             "```bash\npython scripts/study_ais.py --score --jobs 2   # for each model: "
             "python -m pyro_vae.experiments export results/estimator-study/training/<run> "
             "results/estimator-study/models/<run> --evaluations " + IS_REPORT + " --no-figures; "
             "python -m pyro_vae.evaluate results/estimator-study/models/<run> " + " ".join(AIS_FLAGS[:-1])
             + "\npython scripts/study_ais.py             # this section\n```")
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--score", action="store_true", help="export and score by AIS what is not yet scored")
    parser.add_argument("--jobs", type=int, default=1, help="models scored at once, one thread each (default 1)")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    parser.add_argument("--study", type=Path, default=STUDY,
                        help=f"the study's folder (default {STUDY.relative_to(ROOT)})")
    args = parser.parse_args()
    study = args.study.resolve()
    if args.score:
        with ThreadPoolExecutor(args.jobs) as pool:
            for line in pool.map(lambda row: score(study, row), study_runs(study)):
                print(line, flush=True)
    body = table(study)
    print(body)
    if not args.no_write:
        write_section(DOCS, MARKER, body)


if __name__ == "__main__":
    main()
