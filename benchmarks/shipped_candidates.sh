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
declare -A SETS=(  # fsq: its preset, fashion-mnist with FSQ [8,5,5,5] and 1000 codes (tests/test_quantizer_kinds.py checks that)
  [fsq]="--config fashion-mnist-fsq"
  [res]="--config fashion-mnist --set quantizer.kind=residual --set quantizer.stages=2"
)
export OMP_NUM_THREADS=1
score() {  # score PIPELINE OUT: as eval_shipped.sh, at the training schedule's timestep spacing
  [ -f "$2/report.json" ] || vqldm evaluate generation --model "$1" --num-samples 1000 --scheduler unipc --steps 10 --guidance 3 \
    --out "$2" --no-progress > "$2.log" 2>&1
}
candidate() {
  local k=$1
  # shellcheck disable=SC2086
  [ -f "runs/ae-$k/metrics.json" ] || vqldm train-autoencoder ${SETS[$k]} --data fashion-mnist --out "runs/ae-$k" \
    --set train.max_steps="$AE_STEPS" > "runs/ae-$k.log" 2>&1
  [ -f "runs/eval-ae-$k/report.json" ] || vqldm evaluate autoencoder --model "runs/ae-$k" --out "runs/eval-ae-$k" --no-progress > "runs/eval-ae-$k.log" 2>&1
  [ -f "runs/ldm-$k/metrics.json" ] || vqldm train-diffusion --config fashion-mnist --autoencoder "runs/ae-$k" --data fashion-mnist \
    --out "runs/ldm-$k" > "runs/ldm-$k.log" 2>&1
  score "runs/ldm-$k/pipeline" "runs/eval-gen-$k"
  # then the same stage 2 continued to LONG_STEPS (a copy of the run, resumed: the preset's learning rate is
  # constant after warm-up, so this is the longer run's own trajectory)
  [ -d "runs/ldm-$k-long" ] || cp -r "runs/ldm-$k" "runs/ldm-$k-long"
  [ -f "runs/eval-gen-$k-long/report.json" ] || vqldm train-diffusion --config fashion-mnist --autoencoder "runs/ae-$k" \
    --data fashion-mnist --out "runs/ldm-$k-long" --resume --max-steps "$LONG_STEPS" > "runs/ldm-$k-long.log" 2>&1
  score "runs/ldm-$k-long/pipeline" "runs/eval-gen-$k-long"
}
mkdir -p runs
KINDS=(fsq res)  # the tables' order
for k in "${KINDS[@]}"; do candidate "$k" & done
wait
python benchmarks/shipped_candidates.py "${KINDS[@]}"
python benchmarks/shipped_candidates.py --stage2 long "${KINDS[@]}"
