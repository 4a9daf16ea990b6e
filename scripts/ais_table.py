"""Write the section "How loose is importance sampling?" of docs/results.md from the reports in
results/: importance sampling (IS) against annealed importance sampling (AIS) on the same test
images, and BDMC's bounds on items simulated from each model.

    python scripts/ais_table.py [--no-write]

The reports are made by the commands listed in the section (``pyro_vae.evaluate --method ais``,
``--bdmc N``); this script only reads them, so it owns the section: re-run it after re-scoring.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from pyro_vae.marginal import mean_and_stderr

ROOT = Path(__file__).resolve().parents[1]
RESULTS, DOCS = ROOT / "results", ROOT / "docs" / "results.md"
MODELS = {"VAE": "paper-trace-L1-21000ep-equal1800-ema0.9999", "IWAE k=5": "paper-iwae-k5-7000ep-equal600-ema0.9999"}
TITLE = "How loose is importance sampling?"
BASELINE_K = 5000


def load(folder: Path, pattern: str) -> list[tuple[Path, dict]]:
    return [(path, json.loads(path.read_text())) for path in sorted(folder.glob(pattern))]


def estimates(folder: Path) -> dict[tuple, dict]:
    """(method, settings label, number of images) -> per-image log p^(x), seconds and the file."""
    found = {}
    for path, report in load(folder, "eval_test_K*.json"):
        s = report["settings"]
        if s.get("seed", 0) or s.get("binarization_seed", 0) or "_" in path.stem.split("_K")[1]:
            continue  # only the default score at each K
        found[("IS", f"K = {s['num_samples']:,}", s["num_images"])] = (report, path)
    for path, report in load(folder, "eval_test_ais_*.json"):
        s = report["settings"]
        label = f"{s['init']}, T = {s['num_steps']:,}, {s['num_chains']} chains"
        found[("AIS", label, s["num_images"])] = (report, path)
    return found


def command(path: Path, report: dict, folder: Path) -> str:
    """The command that writes a report, read back from its name (and its device)."""
    stem = path.stem
    where = f"results/{folder.name}"
    if stem.startswith("eval_test_K"):
        k = stem.split("_K")[1]
        device = report["settings"].get("device", "cpu")
        return f"python -m pyro_vae.evaluate {where} --num-samples {k}" + (" --device cuda" if device != "cpu" else "")
    m = re.match(r"eval_(test_ais|bdmc_N(\d+))_C(\d+)_T(\d+)_(guide|prior)(.*)", stem)
    flags = ["--method ais"] if m.group(1) == "test_ais" else [f"--bdmc {m.group(2)}"]
    flags += [f"--ais-steps {m.group(4)}"] + ([f"--init {m.group(5)}"] if m.group(5) != "guide" else [])
    first = re.search(r"_first(\d+)", m.group(6))
    flags += [f"--limit {first.group(1)}"] if first else []
    return f"python -m pyro_vae.evaluate {where} {' '.join(flags)} --compile"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    per_model = {name: estimates(RESULTS / folder) for name, folder in MODELS.items()}
    keys = sorted({key for found in per_model.values() for key in found},
                  key=lambda k: (-k[2], k[0] != "IS", k[1]))
    subsets = sorted({key[2] for key in keys}, reverse=True)
    first, second = MODELS
    header = ("| images | estimator | " + " | ".join(f"{m}: log p̂(x) | {m}: minus IS K = {BASELINE_K:,} (paired)"
                                                     for m in MODELS)
              + f" | {second} minus {first} (paired) | seconds (" + " / ".join(MODELS) + ") |")
    lines = [header, "|" + "---|" * (4 + 2 * len(MODELS))]
    commands = []
    for n in subsets:
        def in_order(key):  # IS first, then by init and length, numbers compared as numbers
            return key[0] != "IS", re.sub(r"[\d,]+", lambda m: m.group().replace(",", "").zfill(9), key[1])
        for key in sorted({(method, label) for method, label, _ in keys}, key=in_order):
            cells, seconds, any_found, scored = [], [], False, {}
            for name, folder in MODELS.items():
                found = per_model[name]
                # a score of more images covers the first n of them (IS scores are per image)
                covering = [found[(*key, m)] for m in subsets if m > n and (*key, m) in found]
                source = found.get((*key, n)) or (covering[0] if covering else None)
                baseline = next((found[("IS", f"K = {BASELINE_K:,}", m)] for m in subsets
                                 if m >= n and ("IS", f"K = {BASELINE_K:,}", m) in found), None)
                if source is None:
                    cells += ["", ""]
                    seconds.append("")
                    continue
                any_found = True
                report, path = source
                values = torch.tensor(report["per_image"]["log_px"][:n], dtype=torch.float64)
                scored[name] = values
                mean, stderr = mean_and_stderr(values)
                cells.append(f"{mean:.2f} ± {stderr:.2f}")
                if baseline is not None and not (key == ("IS", f"K = {BASELINE_K:,}")):
                    base = torch.tensor(baseline[0]["per_image"]["log_px"][:n], dtype=torch.float64)
                    difference, difference_err = mean_and_stderr(values - base)
                    cells.append(f"{difference:+.3f} ± {difference_err:.3f}")
                else:
                    cells.append("")
                own = report["settings"]["num_images"] == n
                device = report["settings"].get("device", "cpu")
                on = "" if device == "cpu" else f" ({'GPU' if device.startswith('cuda') else device})"
                seconds.append(f"{report['seconds']:,.0f}{on}" if own else "")
                if own:
                    commands.append(command(path, report, RESULTS / folder))
            if any_found:
                between = ""
                if len(scored) == 2:
                    difference, difference_err = mean_and_stderr(scored[second] - scored[first])
                    between = f"{difference:+.3f} ± {difference_err:.3f}"
                lines.append(f"| {n:,} | {key[0]} {key[1]} | " + " | ".join(cells)
                             + f" | {between} | {' / '.join(seconds)} |")
    bdmc = ["| model | AIS settings | items | forward AIS (lower) | reverse AIS (upper) | gap (upper − lower) "
            "| acceptance | seconds |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, folder in MODELS.items():
        for path, report in load(RESULTS / folder, "eval_bdmc_*.json"):
            s, m = report["settings"], report["summary"]
            bdmc.append(f"| {name} | {s['init']}, T = {s['num_steps']:,}, {s['num_chains']} chains | {s['num_items']} "
                        f"| {m['lower_mean']:.2f} ± {m['lower_stderr']:.2f} | {m['upper_mean']:.2f} ± "
                        f"{m['upper_stderr']:.2f} | {m['gap_mean']:+.3f} ± {m['gap_stderr']:.3f} | "
                        f"{m['acceptance_mean']:.2f} | {report['seconds']:,.0f} |")
            commands.append(command(path, report, RESULTS / folder))
    body = "\n".join(lines) + "\n\nBDMC on items simulated from each model (Grosse et al. 2015):\n\n" + "\n".join(bdmc)
    body += "\n\nCommands (each writes one report into its model's folder; `python scripts/ais_table.py` " \
            "rewrites this section from them):\n\n```bash\n" + "\n".join(dict.fromkeys(commands)) + "\n```"
    print(body)
    if not args.no_write:
        write_section(DOCS, "<!-- ais_table.py writes below this line -->", body)


def _section_bounds(text: str, marker: str) -> tuple[int, int]:
    """Where the section below ``marker`` starts, and where the next heading ends it."""
    start = text.index(marker) + len(marker)
    end = min((i for i in (text.find("\n## ", start), text.find("\n### ", start)) if i >= 0), default=len(text))
    return start, end


def section_text(docs: Path, marker: str) -> str:
    """What ``write_section`` last wrote below ``marker``."""
    text = docs.read_text()
    start, end = _section_bounds(text, marker)
    return text[start:end].strip()


def write_section(docs: Path, marker: str, body: str) -> None:
    """Replace what follows ``marker`` in ``docs`` up to the next heading by ``body``, keeping the
    prose above the marker line."""
    text = docs.read_text()
    start, end = _section_bounds(text, marker)
    docs.write_text(text[:start] + "\n\n" + body.strip() + "\n" + text[end:])


if __name__ == "__main__":
    main()
