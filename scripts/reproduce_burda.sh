#!/usr/bin/env bash
# Burda et al.'s MNIST benchmark as in docs/results.md: the VAE (ELBO, L = 1) to 21,000 epochs and
# IWAE (k = 5) to 7,000, each a chain of runs, every one continuing the last from a copy of its
# checkpoint. About 19 + 12 hours of training on two CPU cores; each command resumes its run if it
# is interrupted, so the script can be run again until it finishes. The final runs end up in
# $OUT/paper-trace-L1-21000ep-equal1800-ema0.9999 and $OUT/paper-iwae-k5-7000ep-equal600-ema0.9999,
# each scored with K = 5000.
set -euo pipefail
OUT=${OUT:-runs}
paper() { python -m pyro_vae.experiments paper --out "$OUT" "$@"; }

# the VAE: eight equal stages over 1,800 epochs, then the last rate; averaged from epoch 3,281
paper --elbo trace --epochs 1800 --lr-schedule burda-equal
paper --elbo trace --epochs 3280 --lr-schedule burda-equal --schedule-epochs 1800 \
    --continue-from "$OUT/paper-trace-L1-1800ep-equal"
previous="$OUT/paper-trace-L1-3280ep-equal1800"
for epochs in 5000 6900 10000 19000 21000; do
    paper --elbo trace --epochs "$epochs" --lr-schedule burda-equal --schedule-epochs 1800 --ema-decay 0.9999 \
        --continue-from "$previous"
    previous="$OUT/paper-trace-L1-${epochs}ep-equal1800-ema0.9999"
done

# IWAE k = 5: eight equal stages over 600 epochs, then the last rate; averaged from epoch 1,201
paper --elbo iwae --num-particles 5 --epochs 600 --lr-schedule burda-equal
paper --elbo iwae --num-particles 5 --epochs 1200 --lr-schedule burda-equal --schedule-epochs 600 \
    --continue-from "$OUT/paper-iwae-k5-600ep-equal"
previous="$OUT/paper-iwae-k5-1200ep-equal600"
for epochs in 2000 3280 4250 5700 7000; do
    paper --elbo iwae --num-particles 5 --epochs "$epochs" --lr-schedule burda-equal --schedule-epochs 600 \
        --ema-decay 0.9999 --continue-from "$previous"
    previous="$OUT/paper-iwae-k5-${epochs}ep-equal600-ema0.9999"
done

# the figure of both learning curves
python -m pyro_vae.experiments paper-figure "$OUT/paper-trace-L1-21000ep-equal1800-ema0.9999" \
    "$OUT/paper-iwae-k5-7000ep-equal600-ema0.9999" --out "$OUT/paper_learning_curve.png"
