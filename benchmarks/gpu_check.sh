#!/usr/bin/env bash
# GPU check (issue 10): both trainers with no / bf16 / fp16 autocast, fp16 and bf16 sampling vs fp32, and
# vqldm's pipeline timed against diffusers' LDMPipeline on the GPU. Extra arguments go to gpu_check.py,
# e.g. `bash benchmarks/gpu_check.sh --device cpu --quick` (the CPU path the tests run).
#
# On a machine without vqldm installed (a lent GPU box), wheels carried in .whl/ (diffusers and what it
# needs) and vqldm itself are installed into /tmp/site first; nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=gpu_env.sh
source benchmarks/gpu_env.sh
exec python3 benchmarks/gpu_check.py "$@"
