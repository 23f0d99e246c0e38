"""Evaluate an exported ``VQModel``: reconstruction quality, codebook usage, and the latent scaling factor.

These functions use the plain diffusers model (encode -> its own nearest-code lookup -> decode), so the
numbers describe exactly what a diffusers user loads.
"""

from __future__ import annotations

import torch
from diffusers import VQModel

from ..data.splits import ImageSplit
from .metrics import codebook_stats, psnr, ssim
from .model import code_vocabulary, encode_indices, global_codes


@torch.inference_mode()
def evaluate_reconstruction(vqmodel: VQModel, data: ImageSplit, batch_size: int = 256, device: torch.device | str = "cpu",
                            max_images: int | None = None, progress: bool = True, return_details: bool = False) -> dict:
    """PSNR / SSIM (means over images) and codebook statistics counted over the whole split."""
    vqmodel.eval()
    n = len(data) if max_images is None else min(len(data), max_images)
    k = code_vocabulary(vqmodel)  # residual / hierarchical: K per stage, counted apart
    counts = torch.zeros(k, dtype=torch.long)
    psnrs, ssims, all_indices = [], [], []
    for x, _ in data.batches(batch_size, n, progress, "evaluating reconstructions"):
        x = x.to(device)
        h = vqmodel.encode(x).latents
        z_q, indices = encode_indices(vqmodel, h)
        rec = vqmodel.decode(z_q, force_not_quantize=True).sample
        psnrs.append(psnr(rec.float(), x.float()).cpu())
        ssims.append(ssim(rec.float(), x.float()).cpu())
        indices = global_codes(vqmodel, indices)
        counts += torch.bincount(indices.flatten().cpu(), minlength=k)
        if return_details:
            all_indices.append(indices.cpu())
    result = {"images": n, "psnr": float(torch.cat(psnrs).mean()), "ssim": float(torch.cat(ssims).mean())}
    result.update(codebook_stats(counts))
    if return_details:
        result["counts"] = counts
        result["indices"] = torch.cat(all_indices)
    return result


@torch.inference_mode()
def measure_scaling_factor(vqmodel: VQModel, data: ImageSplit, batch_size: int = 256, device: torch.device | str = "cpu",
                           max_images: int | None = 10_000, progress: bool = True) -> float:
    """1 / std of the pre-quantization latents h over (up to ``max_images`` of) ``data``.

    LDM convention (Rombach et al. 2022, sec. 4.3.2 / D.1): the diffusion model sees h * scaling_factor,
    which then has unit variance. The std is over all elements (one scalar), in float64 sums.
    """
    vqmodel.eval()
    n = len(data) if max_images is None else min(len(data), max_images)
    total, total_sq, count = 0.0, 0.0, 0
    for x, _ in data.batches(batch_size, n, progress, "measuring latent scale"):
        h = vqmodel.encode(x.to(device)).latents.double()
        total += float(h.sum())
        total_sq += float((h * h).sum())
        count += h.numel()
    mean = total / count
    var = max(total_sq / count - mean * mean, 1e-12)
    return float(1.0 / var**0.5)
