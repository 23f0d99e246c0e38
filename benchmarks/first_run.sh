#!/usr/bin/env bash
# Times the README's first command as a new user runs it: `pip install -e . && vqldm generate --out samples.png`,
# in a new virtual environment on this machine. torch/torchvision and the PyPI dependencies are taken from
# the machine's site-packages (--system-site-packages), i.e. after `pip install torch torchvision`, which on
# this project's machines installs from local disk; their download time is not part of the figure.
# Then `--class 7 --guidance 3` and a check of that grid with the shipped Fashion-MNIST classifier.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m venv --system-site-packages "$work/venv"
# shellcheck disable=SC1091
source "$work/venv/bin/activate"
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
(cd "$work" && vqldm generate --class 7 --guidance 3 --num-images 64 --out sneakers/ --no-progress)
python - "$work/sneakers" <<'PY'
import sys
from pathlib import Path
import numpy as np
import torch
from PIL import Image
from pipelines.features import load_feature_extractor

files = sorted(Path(sys.argv[1]).glob("*.png"))
x = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("L"), dtype=np.float32) for f in files]) / 127.5 - 1)[:, None]
pred = load_feature_extractor(None).classify(x)
print(f"--class 7 --guidance 3: {int((pred == 7).sum())}/{len(pred)} generated images classified as class 7 (sneaker)")
PY
