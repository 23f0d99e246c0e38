"""Image I/O: [-1, 1] tensors -> uint8 arrays, grids, and PNG files written atomically."""

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


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
