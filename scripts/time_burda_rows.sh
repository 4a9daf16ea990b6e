#!/usr/bin/env bash
# Seconds per 60,000-image epoch of each planned row of Burda et al.'s Table 1 (docs/results.md,
# "The rest of Table 1: plan"): two epochs of each on 6,000 training images with --compile, the
# second epoch's training time x 10. DEVICE=cuda times them on a GPU.
set -euo pipefail
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
row() {
  local name=$1
  shift
  python -m pyro_vae.train "$@" --binarize dynamic --valid-size 0 --train-size 6000 --epochs 2 --compile \
    --adam-eps 1e-4 --eval-samples 0 --no-progress --device "${DEVICE:-cpu}" --run-dir "$tmp/run" > /dev/null
  python - "$tmp/run/metrics.csv" "$name" <<'PY'
import csv
import sys

last = list(csv.DictReader(open(sys.argv[1])))[-1]
print(f"| {sys.argv[2]} | {10 * float(last['epoch_seconds']):.1f} |")
PY
  rm -rf "$tmp/run"
}
net=(--hidden-dims 200 200 --latent-dim 50)
echo "| row | seconds per epoch |"
echo "|---|---:|"
row "one stochastic layer, VAE (L = 1)" "${net[@]}" --elbo trace
row "one stochastic layer, IWAE k = 50" "${net[@]}" --elbo iwae --num-particles 50 --vectorize-particles
row "one stochastic layer, DReG k = 50" "${net[@]}" --elbo dreg --num-particles 50 --vectorize-particles
row "two stochastic layers, VAE (L = 1)" --model burda2 --elbo trace
row "two stochastic layers, IWAE k = 50" --model burda2 --elbo iwae --num-particles 50 --vectorize-particles
