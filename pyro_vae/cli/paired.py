"""``python -m pyro_vae.paired A.json B.json`` (``pyro-vae paired``): the paired difference of
two evaluations on the same images; see pyro_vae/paired_scores.py for why and how."""

from __future__ import annotations

from typing import Sequence

from .. import paired_scores
from ..paired_scores import format_table, load_evaluation, paired_differences
from . import ArgumentParser, run_main


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m pyro_vae.paired",
                            description=paired_scores.__doc__.split("\n\n")[0])
    parser.add_argument("a", help="the first evaluation JSON (the baseline)")
    parser.add_argument("b", help="the second evaluation JSON, scored on the same images")
    args = parser.parse_args(argv)
    a, b = load_evaluation(args.a), load_evaluation(args.b)
    print(format_table(paired_differences(a, b), a, b))


if __name__ == "__main__":
    run_main(main)
