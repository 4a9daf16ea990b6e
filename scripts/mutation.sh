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
declare -A TESTS=(
    [marginal]="tests/test_marginal.py"
    [estimators]="tests/test_estimators.py tests/test_subsample.py"
    [objectives]="tests/test_objectives.py tests/test_valid_programs.py"
)
for name in "${@:-marginal estimators objectives}"; do
    for file in $name; do
        mutmut run --paths-to-mutate "pyro_vae/$file.py" --tests-dir tests --simple-output \
            --runner "bash -c 'python -m pytest -q -n 0 -x -p no:cacheprovider -m \"not slow\" ${TESTS[$file]} || exit 1'" \
            || true  # mutmut exits non-zero when mutants survive
        mutmut results | tee "mutation-$file.txt"
    done
done
