#!/usr/bin/env bash
# The GPU measurements of AIS, in one go: bench_ais.py on CUDA (written into docs/benchmarks.md),
# then the committed IWAE (k = 5) model's whole test set by AIS from its encoder at T = 100 and
# BDMC on 100 simulated items at T = 1,000, written beside the CPU reports (names end in _cuda).
#   bash benchmarks/gpu_ais.sh
# Targets (issue: speed): --compile <= 0.6x the plain eager AIS loop's time, eager <= 0.85x, one
# leapfrog step <= 1.2x one bare decoder forward and backward.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python benchmarks/bench_ais.py --device cuda --steps 100 --rounds 3
model=results/paper-iwae-k5-7000ep-equal600-ema0.9999
python -m pyro_vae.evaluate "$model" --method ais --ais-steps 100 --compile --device cuda --batch-size 1000
python -m pyro_vae.evaluate "$model" --bdmc 100 --ais-steps 1000 --compile --device cuda
