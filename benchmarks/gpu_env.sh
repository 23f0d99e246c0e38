# Sourced by gpu_check.sh and gpu_bench.sh: on a machine without vqldm installed (a lent GPU box, which
# reaches no package registry), wheels carried in .whl/ (diffusers and what it needs) and vqldm itself are
# installed into /tmp/site first; nothing is downloaded. Then the GPU's name, driver and memory.
if ! python3 -c "import vqldm, diffusers" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . >/dev/null
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
