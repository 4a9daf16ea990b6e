"""Write the table "The estimators (`--elbo`)" of docs/cli.md from the registry
(``pyro_vae.objectives.OBJECTIVES``): each estimator's name, summary, samples per item and options,
with their defaults and help, as its record has them.

    python scripts/estimator_table.py [--check]

The script owns the table: after registering an estimator, re-run it. ``--check`` writes nothing
and exits 1 if the page differs from what it would write (tests/test_docs.py makes the same
comparison).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ais_table import section_text, write_section
from pyro_vae.objectives import OBJECTIVES, estimator_options

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
MARKER = "<!-- estimator_table.py writes below this line -->"


def samples(symbol: str) -> str:
    return {"L": "L = `--num-particles`", "K": "K = `--num-particles`",
            "M×K": "M = `--num-estimates` estimates of K = `--num-particles`"}[symbol]


def table() -> str:
    options = {option.name: option for option in estimator_options()}
    rows = ["| `--elbo` | estimator | samples per item | its options (default) |", "|---|---|---|---|"]
    for name, record in OBJECTIVES.items():
        own = []
        for option in record.options or {}:
            flag = options[option]
            default = "required" if flag.required else f"{record.options[option]}"
            own.append(f"`{flag.flag}` ({default}): {record.option_help.get(option, '').rstrip('.')}")
        rows.append(f"| `{name}` | {record.summary} | {samples(record.samples)} | {'; '.join(own) or '-'} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the page is out of date")
    args = parser.parse_args()
    if args.check:
        if section_text(DOCS, MARKER) != table():
            sys.exit(f"{DOCS}: the estimator table is out of date; run python scripts/estimator_table.py")
        return
    write_section(DOCS, MARKER, table())


if __name__ == "__main__":
    main()
