"""Reconstruction and codebook metrics. Images are [-1, 1]; PSNR/SSIM are computed on [0, 1]."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (data range 1 after mapping to [0, 1]); shape B."""
    a = ((rec.clamp(-1, 1) + 1) / 2).flatten(1)
    b = ((x + 1) / 2).flatten(1)
    mse = ((a - b) ** 2).mean(dim=1).clamp(min=1e-10)
    return 10 * torch.log10(1.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) on [0, 1]; shape B.

    The window shrinks for images smaller than 11 pixels; statistics use 'valid' positions only.
    """
    a = (rec.clamp(-1, 1) + 1) / 2
    b = (x + 1) / 2
    c = a.shape[1]
    size = min(11, a.shape[-1], a.shape[-2])
    win = _gaussian_window(size).to(a)[None, None].repeat(c, 1, 1, 1)

    def blur(t):
        return F.conv2d(t, win, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(dim=1)


def codebook_stats(counts: torch.Tensor) -> dict[str, float]:
    """From per-code assignment counts over a whole split: usage %, perplexity, dead codes."""
    counts = counts.double()
    total = counts.sum().clamp(min=1)
    p = counts / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    used = int((counts > 0).sum())
    k = counts.numel()
    return {
        "codebook_usage": 100.0 * used / k,
        "codes_used": used,
        "dead_codes": k - used,
        "perplexity": float(entropy.exp()),
        "perplexity_max": float(k),
        "entropy_bits": float(entropy / math.log(2)),
    }
