#!/usr/bin/env bash
# GPU check (issue 10): both trainers with no / bf16 / fp16 autocast, fp16 and bf16 sampling vs fp32, and
# vqldm's pipeline timed against diffusers' LDMPipeline on the GPU. Extra arguments go to gpu_check.py,
# e.g. `bash benchmarks/gpu_check.sh --device cpu --quick` (the CPU path the tests run).
#
# On a machine without vqldm installed (a lent GPU box), wheels carried in .whl/ (diffusers and what it
# needs) and vqldm itself are installed into /tmp/site first; nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import vqldm, diffusers" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . >/dev/null
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
exec python3 benchmarks/gpu_check.py "$@"
