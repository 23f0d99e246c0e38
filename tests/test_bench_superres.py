"""The helpers of benchmarks/bench_superres.py: the bicubic baseline, the quality columns and the table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_superres import bicubic_upscale, format_table, quality  # noqa: E402

from vqldm.latents.cache import downsample  # noqa: E402


def test_bicubic_baseline_upscales_the_training_inputs_back_to_size():
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    low = downsample(x, (8, 8))
    up = bicubic_upscale(low, (32, 32))
    assert low.shape == (3, 1, 8, 8) and up.shape == x.shape
    assert up.min() >= -1 and up.max() <= 1  # bicubic overshoots; clamped like every other row
    flat = torch.full((1, 1, 8, 8), 0.25)
    assert torch.allclose(bicubic_upscale(flat, (32, 32)), torch.full((1, 1, 32, 32), 0.25), atol=1e-6)


def test_quality_of_the_image_itself_is_perfect_and_the_table_prints_missing_values():
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    q = quality(x, x)
    assert q["psnr"] == pytest.approx(100.0) and q["ssim"] == pytest.approx(1.0, abs=1e-4)
    table = format_table([{"method": "bicubic", "steps": None, **q, "rfid": 12.5, "scale": "above blur 1px (3)"},
                          {"method": "calibration: real-vs-real", "steps": None, "psnr": None, "ssim": None, "rfid": 1.0}])
    lines = table.splitlines()
    assert len(lines) == 4 and "12.500" in lines[2] and "above blur 1px" in lines[2]
    assert lines[3].split()[-4:] == ["-", "-", "-", "1.000"]
