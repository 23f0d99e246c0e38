"""``report.json``: what every ``vqldm evaluate`` report carries besides its measurements (the device and
environment it was measured on), JSON-safe values, and the atomic write.

The measurements are in :mod:`.reconstruction` (autoencoders) and :mod:`.generation` (samplers); the
scale they are read on in :mod:`.calibration`.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
from pathlib import Path

import torch

from ..plumbing.checkpoint import atomic_write_json


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device``, or CUDA when available and the CPU otherwise."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def environment(device: torch.device) -> dict:
    """Where and when a report was measured: speeds and some results depend on it."""
    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }


def jsonable(obj):
    """``obj`` with tensors as lists and non-finite floats as ``null`` (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report(out: str | Path, report: dict) -> Path:
    """Write ``out/report.json`` atomically, with :func:`jsonable` values."""
    path = Path(out) / "report.json"
    atomic_write_json(path, jsonable(report))
    return path
