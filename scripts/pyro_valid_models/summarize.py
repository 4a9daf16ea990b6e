"""Count the outcomes that plugin.py recorded, one per (program, estimator): python summarize.py
records.json [--list]. A program is a test of Pyro's file with its ELBO parameters dropped.

ok:ran               Pyro expects the program to work, and the estimator ran (trace and
                     meanfield: with Pyro's own loss on the same draws)
ok:refused-by-name   ... and the estimator refused it with a ValueError naming a site,
                     max_plate_nesting, or the vectorized particles the program cannot take
as-pyro:<Error>      the estimator failed exactly as Pyro's own ELBO with the same settings
err:raised <Error>   Pyro expects an error or a warning, and the estimator raised one
BAD:...              anything else: a crash, a hang, a silent acceptance, a wrong value"""

import collections
import json
import re
import sys


def program(record):
    test = re.sub(r"\[.*\]", lambda m: "[" + "-".join(
        p for p in m.group(0)[1:-1].split("-") if not re.search(r"ELBO|Elbo|Energy|TMC|Trace|True|False", p)) + "]",
        record["test"])
    return f"{test} {record['pyro']}"


def classify(record):
    outcome = record["outcome"]
    if record.get("stock") == outcome and outcome != "ran":
        return "as-pyro:" + outcome
    if record["kind"] == "ok":
        if outcome == "ran":
            return "ok:ran"
        if outcome == "ValueError" and any(word in record["message"] for word in
                                           ("site", "max_plate_nesting", "vectorized particles")):
            return "ok:refused-by-name"
        return "BAD:" + outcome
    if outcome in ("ran", "hang") or outcome.startswith(("WRONG", "nonfinite")):
        return "BAD:" + ("hang" if outcome == "hang" else "silent")
    return "err:raised " + outcome


records = json.load(open(sys.argv[1]))
unique = {}
for record in records:
    unique.setdefault((program(record), record["kind"], record["estimator"]), record)
print(f"{len({key[0] for key in unique})} programs, {len(unique)} (program, estimator) runs")
for label, count in sorted(collections.Counter(classify(r) for r in unique.values()).items()):
    print(f"{count:6d}  {label}")
if "--list" in sys.argv:
    for key, record in sorted(unique.items()):
        if classify(record).startswith("BAD"):
            print(classify(record), key[0].split("::")[-1], record["estimator"], record["max_plate_nesting"], "|",
                  record["message"][:200])
