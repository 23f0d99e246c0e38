"""Image I/O: [-1, 1] tensors -> uint8 arrays, grids, and image files (PNG, JPEG, WebP) written atomically."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import torch
from PIL import Image

from .checkpoint import atomic_write_bytes


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] B x C x H x W -> uint8 B x H x W x C."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> Image.Image:
    """[-1, 1] images -> one PIL grid (grayscale stays grayscale)."""
    arr = images_to_uint8(images)
    b, h, w, c = arr.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(b))))
    ncol = int(math.ceil(b / nrow))
    grid = np.zeros((ncol * (h + padding) + padding, nrow * (w + padding) + padding, c), dtype=np.uint8)
    for i in range(b):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = arr[i]
    return Image.fromarray(grid[:, :, 0] if c == 1 else grid)


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def save_image(image: Image.Image, path: str | os.PathLike, fmt: str | None = None) -> None:
    """Write ``image`` atomically as ``fmt`` (default: the format the suffix names: .png, .jpg/.jpeg at
    quality 95, .webp lossless)."""
    fmt = fmt or IMAGE_FORMATS[os.path.splitext(str(path))[1].lower()]
    options = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {})
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    atomic_write_bytes(path, buf.getvalue())


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    save_image(image, path, "PNG")


def size_hw(size) -> tuple[int, int]:
    """``sample_size`` as (height, width): an int means a square."""
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[-1])
    return int(size), int(size)
