"""Inputs of the pipeline: init images and inpainting masks as tensors, and noise interpolation.

Images come in as PIL images, lists of them, numpy ``H x W x C`` / ``B x H x W x C`` in [0, 1], or torch
``B x C x H x W`` in [-1, 1]; masks as PIL / numpy / torch with white or 1 = regenerate.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def to_output(images: torch.Tensor, output_type: str):
    """Decoded images in [-1, 1] -> what a pipeline returns: "pt" (B x c x H x W in [0, 1]), "np"
    (B x H x W x c in [0, 1]) or "pil" (a list of PIL images), as diffusers pipelines do."""
    images = (images.float() / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images
    array = images.cpu().permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return array
    from diffusers.utils import numpy_to_pil

    return numpy_to_pil(array)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between two Gaussian noise tensors (keeps the norm typical of N(0, I);
    linear interpolation would shrink it mid-way). Exact endpoints at t = 0 and t = 1."""
    if t <= 0:
        return a.clone()
    if t >= 1:
        return b.clone()
    a64, b64 = a.double().flatten(), b.double().flatten()
    cos = torch.dot(a64, b64) / (a64.norm() * b64.norm())
    theta = torch.arccos(cos.clamp(-1, 1))
    if theta.abs() < 1e-4:  # nearly parallel: linear is exact enough
        out = (1 - t) * a64 + t * b64
    else:
        out = (torch.sin((1 - t) * theta) * a64 + torch.sin(t * theta) * b64) / torch.sin(theta)
    return out.view_as(a).to(a.dtype)


def to_image_tensor(image, channels: int, size: tuple[int, int], what: str) -> torch.Tensor:
    """PIL image / list of PIL / numpy HWC or BHWC in [0,1] / torch BCHW in [-1,1] -> float B x C x H x W in [-1, 1]."""
    if isinstance(image, torch.Tensor):
        x = image.float()
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"{what} tensor must be B x {channels} x H x W in [-1, 1], got shape {tuple(x.shape)}")
    else:
        items = image if isinstance(image, (list, tuple)) else [image]
        arrays = []
        for item in items:
            if isinstance(item, Image.Image):
                item = item.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.BICUBIC)
                arr = np.asarray(item, dtype=np.float32) / 255.0
            else:
                arr = np.asarray(item, dtype=np.float32)
            if arr.ndim == 2:
                arr = arr[:, :, None]
            arrays.append(arr)
        arr = np.stack(arrays) if arrays[0].ndim == 3 else np.concatenate(arrays)
        if arr.shape[-1] != channels:
            raise ValueError(f"{what} has {arr.shape[-1]} channels but the model expects {channels}")
        x = torch.from_numpy(arr).permute(0, 3, 1, 2) * 2 - 1
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(-1, 1)


def to_mask_tensor(mask, size: tuple[int, int]) -> torch.Tensor:
    """Mask (PIL / numpy / torch; 1 or white = regenerate, 0 or black = keep) -> float B x 1 x H x W in {0, 1}."""
    if isinstance(mask, torch.Tensor):
        m = mask.float()
        while m.ndim < 4:
            m = m[None]
        if m.shape[1] != 1:
            m = m.amax(dim=1, keepdim=True)
    else:
        items = mask if isinstance(mask, (list, tuple)) else [mask]
        arrays = []
        for item in items:
            if isinstance(item, Image.Image):
                arr = np.asarray(item.convert("L").resize((size[1], size[0]), Image.NEAREST), dtype=np.float32) / 255.0
            else:
                arr = np.asarray(item, dtype=np.float32)
                arr = arr.max(axis=-1) if arr.ndim == 3 else arr
            arrays.append(arr)
        m = torch.from_numpy(np.stack(arrays))[:, None]
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="nearest")
    return (m > 0.5).float()
