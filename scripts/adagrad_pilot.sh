#!/usr/bin/env bash
# Kingma & Welling chose Adagrad's step size from {0.01, 0.02, 0.1} "based on performance on the
# training set in the first few iterations". This does that for the latent sweep's Adagrad runs
# (docs/results.md): the seed setting, 3 epochs of each step size for J = 20 and J = 200, and
# prints the training ELBO (running mean over each epoch's minibatches) after epochs 1 and 3.
set -euo pipefail
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "| J | step size | train ELBO, epoch 1 | train ELBO, epoch 3 |"
echo "|---:|---:|---:|---:|"
for latent_dim in 20 200; do
  for lr in 0.01 0.02 0.1; do
    python -m pyro_vae.train --latent-dim "$latent_dim" --optimizer adagrad --lr "$lr" --epochs 3 --compile \
      --eval-samples 0 --no-progress --device "${DEVICE:-cpu}" --run-dir "$tmp/run" > /dev/null
    python - "$tmp/run/metrics.csv" "$latent_dim" "$lr" <<'PY'
import csv
import sys

rows = list(csv.DictReader(open(sys.argv[1])))
print(f"| {sys.argv[2]} | {sys.argv[3]} | {float(rows[0]['train_elbo']):.2f} | {float(rows[-1]['train_elbo']):.2f} |")
PY
    rm -rf "$tmp/run"
  done
done
