#!/usr/bin/env bash
# Which tokenizer the shipped model is built on (issue 19, acceptance 5), chosen by measurement: the two
# quantizers bench_quantizers.py ranked first (residual VQ: best reconstruction; FSQ: best generator at equal
# time), each as the `fashion-mnist` autoencoder preset trained for AE_STEPS steps (default 3000), then the
# `fashion-mnist` diffusion preset on its latents (4000 steps, then continued to LONG_STEPS = 12000); the candidates run side by side, one torch
# thread each, so they get the same machine. Each is scored as the shipped model is (benchmarks/eval_shipped.sh):
# `vqldm evaluate autoencoder` (2000 held-out images) and `vqldm evaluate generation` (1000 vs 1000, UniPC 10
# steps at the training schedule's timestep spacing, guidance 3), both with their calibration rows, then one table.
#   bash benchmarks/shipped_candidates.sh            # ~2 h on 2 CPU cores; runs/ae-KIND, runs/ldm-KIND, runs/eval-*-KIND
set -euo pipefail
cd "$(dirname "$0")/.."
AE_STEPS=${AE_STEPS:-3000}
LONG_STEPS=${LONG_STEPS:-12000}
declare -A SETS=(
  [fsq]="--set quantizer.kind=fsq --set model.codebook_size=1000 --set quantizer.levels=[8,5,5,5]"
  [res]="--set quantizer.kind=residual --set quantizer.stages=2"
)
export OMP_NUM_THREADS=1
candidate() {
  local k=$1
  # shellcheck disable=SC2086
  [ -f "runs/ae-$k/metrics.json" ] || vqldm train-autoencoder --config fashion-mnist --data fashion-mnist --out "runs/ae-$k" \
    ${SETS[$k]} --set train.max_steps="$AE_STEPS" > "runs/ae-$k.log" 2>&1
  [ -f "runs/eval-ae-$k/report.json" ] || vqldm evaluate autoencoder --model "runs/ae-$k" --out "runs/eval-ae-$k" --no-progress > "runs/eval-ae-$k.log" 2>&1
  [ -f "runs/ldm-$k/metrics.json" ] || vqldm train-diffusion --config fashion-mnist --autoencoder "runs/ae-$k" --data fashion-mnist \
    --out "runs/ldm-$k" > "runs/ldm-$k.log" 2>&1
  [ -f "runs/eval-gen-$k/report.json" ] || vqldm evaluate generation --model "runs/ldm-$k/pipeline" --num-samples 1000 \
    --scheduler unipc --steps 10 --guidance 3 --out "runs/eval-gen-$k" --no-progress > "runs/eval-gen-$k.log" 2>&1
  # then the same stage 2 continued to LONG_STEPS (a copy of the run, resumed: the preset's learning rate is
  # constant after warm-up, so this is the longer run's own trajectory)
  if [ ! -f "runs/ldm-$k-long/metrics.json" ] || [ "$(python -c "import json;print(json.load(open('runs/ldm-$k-long/metrics.json'))['step'])")" != "$LONG_STEPS" ]; then
    [ -d "runs/ldm-$k-long" ] || cp -r "runs/ldm-$k" "runs/ldm-$k-long"
    vqldm train-diffusion --config fashion-mnist --autoencoder "runs/ae-$k" --data fashion-mnist --out "runs/ldm-$k-long" \
      --resume --max-steps "$LONG_STEPS" > "runs/ldm-$k-long.log" 2>&1
  fi
  [ -f "runs/eval-gen-$k-long/report.json" ] || vqldm evaluate generation --model "runs/ldm-$k-long/pipeline" --num-samples 1000 \
    --scheduler unipc --steps 10 --guidance 3 --out "runs/eval-gen-$k-long" --no-progress > "runs/eval-gen-$k-long.log" 2>&1
}
mkdir -p runs
for k in "${!SETS[@]}"; do candidate "$k" & done
wait
python benchmarks/shipped_candidates.py "${!SETS[@]}"
python benchmarks/shipped_candidates.py --stage2 long "${!SETS[@]}"
