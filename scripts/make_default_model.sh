#!/usr/bin/env bash
# Rebuilds the model shipped inside the package (pipelines/default_model/) with vqldm's own CLI and
# presets: a class-conditional Fashion-MNIST latent diffusion pipeline plus the domain classifier used
# for FID/KID features and class-accuracy checks. About an hour on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
vqldm train-autoencoder --config configs/autoencoder/fashion-mnist.yaml --data fashion-mnist --out "$RUNS/ae"
vqldm train-diffusion --config configs/diffusion/fashion-mnist.yaml --autoencoder "$RUNS/ae" --data fashion-mnist --out "$RUNS/ldm"
vqldm evaluate train-features --data fashion-mnist --max-steps 250 --out "$RUNS/features"
python scripts/install_default_model.py "$RUNS/ldm/pipeline" "$RUNS/features" --scheduler dpm --steps 20  # from benchmarks/bench_steps.py
