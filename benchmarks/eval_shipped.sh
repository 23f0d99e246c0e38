#!/usr/bin/env bash
# Quality figures of the shipped model quoted in docs/results.md and README.md: generation metrics and
# per-class accuracy at the model's defaults (sampler, steps and default_guidance from vqldm.json: what
# `vqldm generate` with no options does), and the autoencoder's calibrated reconstruction report
# (runs/ae = its training run, or AE_RUN=...). Features: the default, fashion-mnist-detail.
set -euo pipefail
cd "$(dirname "$0")/.."
vqldm evaluate generation --num-samples 1000 --out bench_out/eval_gen_default --no-progress
vqldm evaluate autoencoder --model "${AE_RUN:-runs/ae}" --out bench_out/eval_ae --no-progress
