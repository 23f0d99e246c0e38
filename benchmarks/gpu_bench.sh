#!/usr/bin/env bash
# GPU benchmark (issue 21): training images/s of both stages at the 256 px presets' shapes against plain
# reference loops, peak GPU memory, fp16 sampling against diffusers' LDMPipeline, and a short stage-1
# quality probe with calibration rows; under 8 minutes on a GPU. Extra arguments go to gpu_bench.py, e.g.
# `bash benchmarks/gpu_bench.sh --device cpu --quick` (the CPU path the tests run).
# Wheels for a GPU box without a package registry: see gpu_env.sh (the same as gpu_check.sh's).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=gpu_env.sh
source benchmarks/gpu_env.sh
exec python3 benchmarks/gpu_bench.py "$@"
