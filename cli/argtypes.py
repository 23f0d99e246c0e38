"""Value types for the ``vqldm`` parser (``type=`` of ``add_argument``): each flag's value is checked once, as
it is parsed. A bad value raises ``argparse.ArgumentTypeError("must be ..., got X")``, which the parser
prints as one line: ``vqldm: error: --steps must be >= 1, got 0`` (``cli/main.py``, ``ArgumentParser``)."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def positive_int(text: str) -> int:
    """A count: images, steps, batch sizes (>= 1)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def finite_float(text: str) -> float:
    """Any finite number (nan and inf would pass every comparison check below them silently)."""
    value = _number(text, float)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (guidance scale, temperature)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def unit_float(text: str) -> float:
    """A finite number in [0, 1] (strength, eta)."""
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def probability(text: str) -> float:
    """A number in (0, 1] (nucleus sampling's top-p)."""
    value = finite_float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` (a sampler setting): the key, and the value read as a YAML scalar ("trailing", 2, true)."""
    import yaml

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE (e.g. timestep_spacing=trailing), got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, list)):
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE with one value, got {text!r}")
    return key, value


def device_name(text: str) -> str:
    """auto, or a device torch can name (cpu, cuda, cuda:N, mps); whether this machine has it is checked later."""
    if text == "auto":
        return text
    import torch

    try:
        torch.device(text)
    except (RuntimeError, TypeError):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or auto, got {text!r}") from None
    return text


_SIZE_UNITS = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def shard_size(text: str) -> tuple[str, int]:
    """Images per shard (``5000``: ("images", 5000)) or a target size a shard (``256MB``, ``1GiB``:
    ("bytes", n))."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b)?\s*", text.lower())
    if not m or (m.group(2) is None and "." in m.group(1)):
        raise argparse.ArgumentTypeError(f"must be an image count (5000) or a size (256MB, 1GB), got {text!r}")
    value = float(m.group(1)) * (_SIZE_UNITS[m.group(2)] if m.group(2) else 1)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return ("bytes" if m.group(2) else "images"), int(value)


def file_stem(text: str) -> str:
    """A plain file-name prefix: letters, digits, '-' and '_' (no folders, dots or braces)."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise argparse.ArgumentTypeError(f"must be letters, digits, '-' or '_' only, got {text!r}")
    return text
