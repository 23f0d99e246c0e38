#!/usr/bin/env bash
# Rebuilds the model shipped inside the package (pipelines/default_model/) with vqldm's own CLI and
# presets: a class-conditional Fashion-MNIST latent diffusion pipeline plus the domain classifier used
# for FID/KID features and class-accuracy checks. About an hour on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
# The model shipped in this commit was made with these commands, with the autoencoder preset as it was
# before its quantizer retune (add: --set quantizer.ema_decay=0.99 --set quantizer.dead_code_threshold=1.0).
vqldm train-autoencoder --config configs/autoencoder/fashion-mnist.yaml --data fashion-mnist --out "$RUNS/ae"
vqldm train-diffusion --config configs/diffusion/fashion-mnist.yaml --autoencoder "$RUNS/ae" --data fashion-mnist --out "$RUNS/ldm"
vqldm evaluate train-features --data fashion-mnist --max-steps 250 --out "$RUNS/features"
python scripts/install_default_model.py "$RUNS/ldm/pipeline" "$RUNS/features"
