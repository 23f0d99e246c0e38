"""What ``vqldm evaluate`` measures, without the command line: reference data, reconstructions, generated
sets, distribution metrics (FID / KID / precision-recall from ``pipelines/metrics.py``) and step sweeps.

Benchmarks import these so that their numbers are computed exactly as ``vqldm evaluate`` computes them.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..autoencoder.losses import LossConfig, load_lpips, perceptual_loss
from ..autoencoder.model import encode_indices
from ..plumbing.data import DataConfig, load_datasets
from ..plumbing.geometry import num_classes as geometry_num_classes
from . import metrics
from .features import FeatureExtractor


def _device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _environment(device: torch.device) -> dict:
    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def load_reference_data(source: str, image_size: int, channels: int, fit: str, progress: bool):
    """The held-out split of ``source`` at the model's size (the real side of every comparison)."""
    labels = "folders" if Path(source).expanduser().is_dir() and any(p.is_dir() for p in Path(source).expanduser().iterdir()) else "none"
    cfg = DataConfig(image_size=image_size, channels=channels, fit=fit, labels=labels)
    return load_datasets(source, cfg, log=lambda m: tqdm.write(m), progress=progress)


def real_images(data, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` held-out images (a fixed random subset; all of them if fewer) in [-1, 1], with labels."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[: min(n, len(data))].sort().values
    return data.batch(idx)


def distribution_metrics(real_f: torch.Tensor, fake_f: torch.Tensor, kid_subsets: int = 100, kid_subset_size: int = 1000,
                         seed: int = 0, with_pr: bool = True) -> dict:
    """FID, KID (mean, std) and precision/recall between two feature sets, with the sample counts."""
    kid_mean, kid_std = metrics.kernel_inception_distance(real_f, fake_f, kid_subsets, kid_subset_size, seed)
    out = {"fid": metrics.fid_from_features(real_f, fake_f), "kid_mean": kid_mean, "kid_std": kid_std,
           "kid_subset_size": metrics.kid_subset_size(kid_subset_size, real_f.shape[0], fake_f.shape[0]), "kid_subsets": kid_subsets,
           "num_real": int(real_f.shape[0]), "num_generated": int(fake_f.shape[0])}
    if with_pr and min(real_f.shape[0], fake_f.shape[0]) > 3:
        out["precision"], out["recall"] = metrics.precision_recall(real_f, fake_f, k=3)
    return out


@torch.inference_mode()
def reconstruct(vqmodel, images: torch.Tensor, batch_size: int, device, progress: bool) -> torch.Tensor:
    """[-1, 1] images -> reconstructions through encode, nearest-code lookup and decode (CPU tensor)."""
    out = []
    for start in tqdm(range(0, images.shape[0], batch_size), desc="reconstructing", disable=not progress, leave=False):
        x = images[start : start + batch_size].to(device)
        z_q, _ = encode_indices(vqmodel, vqmodel.encode(x).latents)
        out.append(vqmodel.decode(z_q, force_not_quantize=True).sample.float().clamp(-1, 1).cpu())
    return torch.cat(out)


def _lpips_mean(originals: torch.Tensor, recs: torch.Tensor, batch_size: int, device) -> tuple[float | None, str]:
    try:
        import lpips  # type: ignore  # noqa: F401
    except ImportError:
        return None, "not measured: the lpips package is missing (pip install 'vqldm[lpips]')"
    notes: list[str] = []
    model = load_lpips(LossConfig(perceptual_weight=1.0), log=notes.append)
    if model is None:
        return None, "not measured: LPIPS VGG weights unavailable offline (put them in the torch cache)"
    model.to(device)
    total = 0.0
    with torch.inference_mode():
        for start in range(0, originals.shape[0], batch_size):
            a, b = recs[start : start + batch_size].to(device), originals[start : start + batch_size].to(device)
            total += float(perceptual_loss(model, a, b)) * a.shape[0]
    return total / originals.shape[0], "lpips (VGG)"


def _load_pipeline(model: str | None, device: torch.device | str = "cpu"):
    from .pipeline import load_pipeline  # imported when needed: `vqldm --help` does not pay for diffusers

    return load_pipeline(model, device=device, freeze_unet=True)  # many batches: the frozen UNet pays off


def pipeline_data_fit(pipe, default: str = "pad") -> str:
    """How the training images were fitted to size (from the pipeline's vqldm.json), so real images match."""
    info = getattr(pipe, "info", None) or {}
    cfg = info.get("training_config") or {}
    return str((cfg.get("data") or {}).get("fit") or default)


def pipeline_num_classes(pipe) -> int | None:
    """Number of real classes of a class-conditional pipeline (its UNet has one extra null class), else None."""
    n = getattr(pipe, "num_classes", None)
    if n is None:
        n = geometry_num_classes(pipe.unet.config)
    return int(n) or None


def generate_images(pipe, num_images: int, batch_size: int, steps: int, guidance: float, seed: int,
                    num_classes: int | None, progress: bool = True, desc: str = "generating") -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """``num_images`` images in [-1, 1] (CPU), their class labels (balanced: i mod num_classes) or None, and
    the seconds spent per image. Batch b uses ``torch.Generator().manual_seed(seed + b)``, so results do not
    depend on anything but the arguments."""
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    labels = torch.arange(num_images) % num_classes if num_classes else None
    out = []
    start_time = time.perf_counter()
    bar = tqdm(total=num_images, desc=desc, unit="img", disable=not progress, leave=False)
    for b, start in enumerate(range(0, num_images, batch_size)):
        size = min(batch_size, num_images - start)
        kwargs = {"batch_size": size, "num_inference_steps": steps, "generator": torch.Generator().manual_seed(seed + b), "output_type": "pt"}
        if labels is not None:
            kwargs.update(class_labels=labels[start : start + size], guidance_scale=guidance)
        images = pipe(**kwargs).images
        images = torch.as_tensor(images).float().cpu()
        if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            images = images.permute(0, 3, 1, 2)  # NHWC -> NCHW
        out.append(images.clamp(0, 1) * 2 - 1)
        bar.update(size)
    bar.close()
    seconds = (time.perf_counter() - start_time) / max(num_images, 1)
    return torch.cat(out), labels, seconds


def warm_up(pipe, batch_size: int, guidance: float, num_classes: int | None) -> None:
    """One untimed 2-step batch at the timed batch shape, so that one-off costs (allocator, kernels, the
    frozen UNet's graph) stay out of s/image."""
    generate_images(pipe, batch_size, batch_size, 2, guidance, 0, num_classes, progress=False)


def sweep_steps(pipe, real_f: torch.Tensor, extractor: FeatureExtractor, schedulers: list[str], steps_list: list[int],
                num_samples: int, batch_size: int, guidance: float, seed: int, num_classes: int | None,
                kid_subsets: int = 100, kid_subset_size: int = 1000, progress: bool = True) -> list[dict]:
    """FID / KID and seconds per image for each (scheduler, steps); restores the pipeline's scheduler."""
    original = pipe.scheduler
    rows = []
    try:
        for name in schedulers:
            pipe.set_scheduler(name)
            warm_up(pipe, batch_size, guidance, num_classes)
            for steps in steps_list:
                fake, _, spi = generate_images(pipe, num_samples, batch_size, steps, guidance, seed, num_classes, progress, f"{name} {steps} steps")
                fake_f = extractor(fake, progress, "features")
                m = distribution_metrics(real_f, fake_f, kid_subsets, kid_subset_size, seed, with_pr=False)
                rows.append({"scheduler": name, "steps": steps, "seconds_per_image": spi, **m})
    finally:
        pipe.scheduler = original
    return rows
