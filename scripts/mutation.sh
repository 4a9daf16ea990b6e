#!/usr/bin/env bash
# Mutation testing of the numerical core with mutmut 2.5.1, one file at a time, each against the
# fast tests that target it. Run in a scratch clone: mutmut writes each mutant into the file.
#   bash scripts/mutation.sh [marginal|estimators|objectives]   (default: all three)
#   mutmut results   # then, in the same clone: the survivors, `mutmut show N` for one
# mutmut 2 counts only exit status 1 as a killed mutant; the runner maps every failure (an
# import or collection error exits 2) to 1, or such mutants would be counted as survivors.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "mutmut==2.5.1"
# the two slowest statistical tests (AIS against quadrature, 14 s; 4,000 gradient draws on a
# subsampled plate, 28 s) are left out: each mutant would take them, and their faster
# neighbours check the same code paths. marginal.py's refusals are tested through the public
# API (test_api.py) and its per-item sums' site filters by AIS (test_ais.py); the estimators'
# option checks are tested through make_elbo (test_valid_programs.py) and their one-by-one
# particles against Pyro's RenyiELBO (test_objectives.py); the registry's summaries are checked
# against docs/cli.md's table (test_docs.py)
declare -A TESTS=(
    [marginal]='tests/test_marginal.py tests/test_api.py tests/test_ais.py -k "not by_ais and not committed and not compiled and not bdmc and not invariant"'
    [estimators]='tests/test_estimators.py tests/test_subsample.py tests/test_valid_programs.py tests/test_objectives.py -k "not plain_pytorch_reference and not jit_variant"'
    [objectives]='tests/test_objectives.py tests/test_valid_programs.py tests/test_docs.py -k "not api_page_runs"'
)
for name in "${@:-marginal estimators objectives}"; do
    for file in $name; do
        runner="$(mktemp)"
        echo "python -m pytest -q -n 0 -x -p no:cacheprovider -m 'not slow' ${TESTS[$file]} || exit 1" > "$runner"
        mutmut run --paths-to-mutate "pyro_vae/$file.py" --tests-dir tests --simple-output --runner "bash $runner" \
            || true  # mutmut exits non-zero when mutants survive
        mutmut results | tee "mutation-$file.txt"
    done
done
