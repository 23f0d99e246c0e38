#!/usr/bin/env bash
# Every benchmark quoted in README.md and docs/results.md, in the order of docs/results.md, from a clean
# checkout after `pip install -e '.[test]'`. Outputs go to bench_out/. Long: it first trains the runs the
# benchmarks read (the shipped model's autoencoder + diffusion runs, about an hour on 2 CPU cores, and the
# preset autoencoder, about 11 minutes), then the latent-vs-pixel benchmark trains a pixel model for as
# long again. Runs that already exist are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench_out
AE=configs/autoencoder/fashion-mnist.yaml
# the shipped model's runs (same commands as scripts/make_default_model.sh, without installing anything)
[ -f runs/ae/metrics.json ] || vqldm train-autoencoder --config $AE --data fashion-mnist --out runs/ae --set train.lr_schedule=constant
[ -f runs/ldm/metrics.json ] || vqldm train-diffusion --config configs/diffusion/fashion-mnist.yaml --autoencoder runs/ae --data fashion-mnist --out runs/ldm
# the L1 autoencoder preset (issue 2's acceptance run; docs/results.md measured it as fashion-mnist-l1)
[ -f runs/ae_final/metrics.json ] || vqldm train-autoencoder --config fashion-mnist-l1 --data fashion-mnist --out runs/ae_final

run() { echo "+ $*"; "$@"; }
run python benchmarks/bench_autoencoder.py --ours runs/ae_final --baseline-lr-schedule constant,cosine --threads 1 | tee bench_out/bench_autoencoder_final.txt
run python benchmarks/bench_autoencoder.py --ours runs/ae --threads 2 | tee bench_out/bench_autoencoder.txt
# `--config auto`'s CPU autoencoder on a small colour folder: codebook usage per quantizer setting (~35 min)
if python -c "import skimage" 2>/dev/null; then
  run python benchmarks/bench_colour_codebook.py --steps 400 | tee bench_out/bench_colour_codebook.txt
  run python benchmarks/bench_colour_codebook.py --steps 900 --settings decay-0.95 --out bench_out/colour_codebook_900 \
    | tee bench_out/bench_colour_codebook_900.txt
else
  echo "skipped bench_colour_codebook.py: it needs scikit-image (pip install scikit-image; benchmark-only)"
fi
run python benchmarks/bench_codebook.py --threads 1 --config fashion-mnist-l1 | tee bench_out/bench_codebook.txt  # codebook capacity (issue 11): 9 autoencoders x 250 steps, ~30 min
run python benchmarks/bench_latent_cache.py --autoencoder runs/ae --threads 1 --images 2048 --steps 10 --repeats 3 | tee bench_out/bench_latent_cache.txt
# the data path at 2k and 20k images of 256 px (issue 12); writes the JPEGs (about 290 MB) to bench_out/data once
run python benchmarks/bench_data.py --threads 1 --json bench_out/bench_data.json | tee bench_out/bench_data.txt
run python benchmarks/bench_features.py --threads 2 | tee bench_out/bench_features.txt
run bash benchmarks/eval_shipped.sh | tee bench_out/eval_shipped.txt
run python benchmarks/bench_steps.py --threads 1 --plot docs/fid_vs_steps.png --json bench_out/steps.json --no-progress | tee bench_out/bench_steps.txt
run python benchmarks/bench_sampling.py --threads 2 --steps 20 --batch 4 --repeats 5 | tee bench_out/bench_sampling_2t.txt
run python benchmarks/bench_sampling.py --threads 1 --steps 20 --batch 4 --num-images 60 --repeats 3 | tee bench_out/bench_sampling.txt
for t in 1 2; do  # the rows behind the --unet-path auto threshold (FROZEN_MIN_UNET_CALLS)
  run python benchmarks/bench_sampling.py --break-even --model pipelines/default_model --batches 1,4,16,32 --threads $t --repeats 40 \
    | tee bench_out/bench_sampling_break_even_shipped_${t}t.txt
  run python benchmarks/bench_sampling.py --break-even --batches 1,4,16 --threads $t --repeats 9 | tee bench_out/bench_sampling_break_even_${t}t.txt
done
run python benchmarks/bench_sampling.py --quality --threads 1 --batch 100 --samples 1000 --unet-path frozen | tee bench_out/bench_sampling_quality.txt
run bash benchmarks/first_run.sh | tee bench_out/first_run.txt
run bash benchmarks/first_run.sh --fresh | tee bench_out/first_run_fresh.txt
run python benchmarks/bench_latent_vs_pixel.py --autoencoder-run runs/ae --diffusion-run runs/ldm --num-samples 1000 --steps 50 \
  --threads 1 --out bench_out/latent_vs_pixel --no-progress | tee bench_out/latent_vs_pixel.txt
# discrete priors: the presets (about 20-50 minutes each on 2 CPU cores), then the equal-time comparison
SHIPPED=$(python -c "from vqldm.pipelines.default_model import DEFAULT_MODEL_DIR as d; print(d)")
for kind in masked autoregressive; do
  [ -f runs/prior-$kind/metrics.json ] || vqldm train-prior --kind $kind --config fashion-mnist --autoencoder "$SHIPPED" --out runs/prior-$kind \
    --set cache.folder=runs/cache_fm
  run vqldm evaluate generation --model runs/prior-$kind/prior --num-samples 1000 --batch-size 250 --out bench_out/eval_prior_$kind \
    | tee bench_out/eval_prior_$kind.txt
done
run python benchmarks/bench_priors.py --device cpu --budget 300 --num-samples 1000 --batch-size 250 --work bench_out/priors_cpu \
  | tee bench_out/bench_priors_cpu.txt
# on a GPU machine: bash benchmarks/gpu_check.sh | tee bench_out/gpu_check.txt; bash benchmarks/gpu_bench.sh | tee bench_out/gpu_bench.txt
run python benchmarks/bad_inputs.py
