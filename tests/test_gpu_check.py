"""The GPU check's CPU path (benchmarks/gpu_check.py --device cpu): both trainers through the CLI with a
mixed-precision setting, and vqldm's pipeline against diffusers' LDMPipeline giving the same images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # a subprocess that trains both stages twice: ~35 s


def test_gpu_check_runs_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--steps", "2", "--repeats", "1", "--work", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "summary: trainers OK, precision OK, speed OK" in out
    assert out.count("train-autoencoder mixed_precision=") == 2 and out.count("train-diffusion   mixed_precision=") == 2
    assert "images agree: max |diff|" in out
    assert (tmp_path / "ldm-fp16" / "pipeline" / "model_index.json").is_file()
