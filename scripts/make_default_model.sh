#!/usr/bin/env bash
# Rebuilds the model shipped inside the package (pipelines/default_model/) with vqldm's own CLI and
# presets: a class-conditional Fashion-MNIST latent diffusion pipeline on the perceptual stage 1, plus the
# detail-sensitive domain classifier used for FID/KID features and class-accuracy checks. The third model
# (issue 19): the FSQ tokenizer `fashion-mnist-fsq` (3000 steps, ~70 minutes on one core) and the
# `fashion-mnist` diffusion preset trained for 12000 steps instead of 4000 (~35 minutes), both chosen by
# benchmarks/shipped_candidates.sh (docs/results.md); the classifier another 17 minutes, then ~10 minutes
# of guidance sweep.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
vqldm train-autoencoder --config configs/autoencoder/fashion-mnist-fsq.yaml --data fashion-mnist --out "$RUNS/ae"
vqldm train-diffusion --config configs/diffusion/fashion-mnist.yaml --autoencoder "$RUNS/ae" --data fashion-mnist --out "$RUNS/ldm" --max-steps 12000
# the evaluation features (evaluation/networks/fashion-mnist-detail/) are trained on real images only, never on anything the
# generator made; SKIP_FEATURES=1 keeps the shipped ones
FEATURES=()
if [ -z "${SKIP_FEATURES:-}" ]; then
  vqldm evaluate train-features --data fashion-mnist --epochs 8 --out "$RUNS/features"
  FEATURES=("$RUNS/features")
fi
# sampler chosen from `python benchmarks/bench_steps.py --schedulers ddim,dpm,unipc ...` (docs/results.md)
python scripts/install_default_model.py "$RUNS/ldm/pipeline" "${FEATURES[@]}" \
  --scheduler unipc --steps 10 --scheduler-option timestep_spacing=trailing
# default_guidance: the lowest-FID scale among those whose class is recognised >= 0.95x as often as on real images
GUIDANCE=$(python benchmarks/bench_guidance.py --out "$RUNS/guidance" | sed -n 's/^chosen default_guidance: \([0-9.]*\).*/\1/p')
python scripts/install_default_model.py "$RUNS/ldm/pipeline" --scheduler unipc --steps 10 \
  --scheduler-option timestep_spacing=trailing --guidance "$GUIDANCE"
