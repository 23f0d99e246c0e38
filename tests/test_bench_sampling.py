"""benchmarks/bench_sampling.py --break-even: the rows behind FROZEN_MIN_UNET_CALLS are measured, not written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_break_even_rows_are_measured_for_each_batch():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "benchmarks/bench_sampling.py", "--break-even", "--image-size", "32", "--unet-width", "32",
                           "--vq-width", "32", "--batches", "1,2", "--repeats", "2", "--threads", "1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = re.findall(r"^\| (\d+) \| 1 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (\d+|never) \| ([\d.]+) \| ([\d.]+) \| (\d+|never) \|$",
                      proc.stdout, flags=re.M)
    assert [r[0] for r in rows] == ["1", "2"], proc.stdout
    for _, eager, frozen, build, *_ in rows:
        assert float(eager) > 0 and float(frozen) > 0 and float(build) >= 0
    assert re.search(r"auto freezes from \d+ calls", proc.stdout)
