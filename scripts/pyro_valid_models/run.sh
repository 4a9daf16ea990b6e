#!/usr/bin/env bash
# Pyro's own valid-model programs through every pyro_vae estimator:
#   bash scripts/pyro_valid_models/run.sh PATH/TO/pyro   (a checkout of github.com/pyro-ppl/pyro)
# prints the outcome counts (summarize.py says what each means); GUESS=1 gives programs that
# leave max_plate_nesting at Pyro's infinite default Pyro's guess of it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pyro_checkout="$(cd "$1" && pwd)"
records="$(mktemp)"
(cd "$pyro_checkout" && RECORDS="$records" PYTHONPATH="$here:$pyro_checkout" \
    python -m pytest -q -p no:cacheprovider -p plugin tests/infer/test_valid_models.py >/dev/null) || true
python "$here/summarize.py" "$records" --list
