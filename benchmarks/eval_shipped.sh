#!/usr/bin/env bash
# Quality figures of the shipped model quoted in docs/results.md and README.md: generation metrics and
# per-class accuracy at guidance 3, and the autoencoder's codebook report (runs/ae = its training run).
set -euo pipefail
cd "$(dirname "$0")/.."
vqldm evaluate generation --num-samples 1000 --guidance 3 --out bench_out/eval_gen_g3 --no-progress
vqldm evaluate autoencoder --model "${AE_RUN:-runs/ae}" --out bench_out/eval_ae --no-progress
