"""``--config auto``: the sizing rules every stage's auto-config shares (the stages' own rules live in their
``config.py``: ``choose_autoencoder``, ``choose_diffusion``, ``choose_prior``; what the data look like comes
from :func:`vqldm.data.summary.describe_data`).

The rules: batch from the preset (smaller for tiny folders); steps from the image count -- a number of
passes over the data, clamped to a range per stage and device; warm-up at most a tenth of the run;
checkpoints and grids at least four times per run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

AUTO = "auto"  # the --config value


@dataclass
class AutoChoice:
    """A preset and the overrides that size it for the data and device (``--set`` applies on top)."""

    preset: str
    overrides: dict


def detect_device() -> str:
    """"cuda" when a GPU is visible, else "cpu" (what accelerate will train on)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def is_gpu(device: str) -> bool:
    return str(device).split(":")[0] == "cuda"


# ----------------------------------------------------------------------------- sizing rules
def passes_to_steps(count: int, batch: int, epochs: float, lo: int, hi: int) -> int:
    """``epochs`` passes over ``count`` images at ``batch``, clamped to [lo, hi], rounded to 100 steps."""
    steps = epochs * count / batch
    return int(min(hi, max(lo, round(steps / 100) * 100)))


def batch_for(count: int, preset_batch: int) -> int:
    """The preset's batch, or the largest power of two a tiny folder fills (at least 8)."""
    return max(8, min(preset_batch, 2 ** int(math.log2(max(1, count)))))


def schedule_for(steps: int, warmup: int, every: int) -> dict:
    """Warm-up at most a tenth of the run; checkpoints and grids every ``every`` steps, and at least four
    times per run (in whole hundreds)."""
    every = min(every, max(100, steps // 4 // 100 * 100))
    return {"max_steps": steps, "warmup_steps": min(warmup, steps // 10), "checkpoint_every": every, "image_every": every}


def nearest_size(side: int, sizes: tuple[int, ...]) -> int:
    """The size nearest to ``side`` in scale (log2): 28 px -> 32, 20 -> 16, 181 and up -> 256."""
    return min(sizes, key=lambda s: (abs(math.log2(s / side)), -s))
