#!/usr/bin/env bash
# Times the README's first command as a new user runs it: `pip install -e . && vqldm generate --out samples.png`,
# in a new virtual environment on this machine, then `--class 7` (the default guidance) checked by the shipped
# Fashion-MNIST classifier.
#   bash benchmarks/first_run.sh          # torch/torchvision and the PyPI dependencies already installed
#                                         # (--system-site-packages): the time of vqldm itself
#   bash benchmarks/first_run.sh --fresh  # an empty venv: `pip install torch torchvision` (from this
#                                         # machine's local disk) is timed first, then the README command
#                                         # installs the PyPI dependencies too
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fresh=${1:-}
if [ "$fresh" = "--fresh" ]; then python -m venv "$work/venv"; else python -m venv --system-site-packages "$work/venv"; fi
# shellcheck disable=SC1091
source "$work/venv/bin/activate"
if [ "$fresh" = "--fresh" ]; then
  t0=$(date +%s.%N)
  pip install -q torch torchvision >"$work/torch.log" 2>&1 || { cat "$work/torch.log"; exit 1; }
  t1=$(date +%s.%N)
  python -c "import sys; print(f'pip install torch torchvision (local disk): {float(sys.argv[2]) - float(sys.argv[1]):.1f} s')" "$t0" "$t1"
fi
echo "machine: $(nproc) CPUs, $(python -c 'import torch; print("torch", torch.__version__, "threads", torch.get_num_threads())'), $(date -u +%F)"
start=$(date +%s.%N)
pip install -q -e . >"$work/pip.log" 2>&1 || { cat "$work/pip.log"; exit 1; }
mid=$(date +%s.%N)
(cd "$work" && vqldm generate --out samples.png --no-progress)
end=$(date +%s.%N)
python - "$start" "$mid" "$end" <<'PY'
import sys
s, m, e = map(float, sys.argv[1:])
print(f"first command: pip install -e . {m - s:.1f} s + vqldm generate {e - m:.1f} s = {e - s:.1f} s (target < 60 s)")
PY
(cd "$work" && vqldm generate --class 7 --num-images 64 --out sneakers/ --no-progress)
python - "$work/sneakers" <<'PY'
import sys
from pathlib import Path
import numpy as np
import torch
from PIL import Image
from vqldm.evaluation.features import load_feature_extractor

files = sorted(Path(sys.argv[1]).glob("*.png"))
x = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("L"), dtype=np.float32) for f in files]) / 127.5 - 1)[:, None]
pred = load_feature_extractor(None).classify(x)
print(f"--class 7: {int((pred == 7).sum())}/{len(pred)} generated images classified as class 7 (sneaker)")
PY
