"""The GPU benchmark's CPU path (``--device cpu --quick``): every part runs and prints what it measured."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # five training runs and an evaluation in subprocesses: ~1 minute

REPO = Path(__file__).resolve().parent.parent


def test_gpu_bench_runs_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", "benchmarks/gpu_bench.sh", "--device", "cpu", "--quick", "--work", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert re.search(r"torch \S+, no GPU \(device cpu\), CPU .+, \d+ cores", out)
    for preset in ("ldm-vq-f4-256", "ldm-vq-f8-256"):
        assert re.search(rf"{preset}: batch \d+, autocast no: vqldm [\d.]+ images/s, reference [\d.]+ images/s, ratio [\d.]+", out)
    assert re.search(r"celebahq-256 on 3x64x64 latents: .* vqldm [\d.]+ images/s, reference [\d.]+ images/s, ratio", out)
    assert re.search(r"vqldm [\d.]+ images/s, diffusers LDMPipeline [\d.]+ images/s, ratio [\d.]+; images agree to max \|diff\| 0\.00e\+00", out)
    assert "real-vs-real" in out and "blur 0.5px" in out and "rFID" in out  # the probe's rFID with its calibration rows
    assert re.search(r"gpu_bench done in \d+ s", out)
