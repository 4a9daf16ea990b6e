#!/usr/bin/env bash
# The GPU measurements of the compiled step, in one go (about 10 minutes on one GPU): the step
# table and the epoch tables on CUDA, each written into docs/benchmarks.md by its script.
#   bash benchmarks/gpu_check.sh
# Targets (docs/design.md): Burda et al.'s net, trace L = 1, an epoch of 60,000 images <= 0.25 s;
# IWAE k = 50 <= 1 s; each within 1.10x of the plain-PyTorch step compiled the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python benchmarks/bench_step.py --device cuda --steps 200
burda=(--hidden-dims 200 200 --latent-dim 50 --train-size 60000 --epochs 5)
python benchmarks/bench_epoch.py --device cuda "${burda[@]}" --elbo trace --particles 1
python benchmarks/bench_epoch.py --device cuda "${burda[@]}" --elbo iwae --particles 50
python benchmarks/bench_epoch.py --device cuda --epochs 5
