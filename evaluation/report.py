"""What ``vqldm evaluate`` measures, without the command line: reference data, reconstructions, generated
sets, distribution metrics (FID / KID / precision-recall from :mod:`.metrics`), step sweeps, and the
calibration every FD / KID is read against (real-vs-real floor, Gaussian blur of 0.5 / 1 px, additive noise:
:func:`calibration_rows`, :func:`place_on_scale`).

Benchmarks import these so that their numbers are computed exactly as ``vqldm evaluate`` computes them.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..autoencoder.losses import LossConfig, load_lpips, perceptual_loss
from ..autoencoder.model import encode_indices
from ..data.config import DataConfig
from ..data.sources import load_datasets
from ..diffusion.model import unet_num_classes
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


def real_indices(num_items: int, n: int, seed: int) -> torch.Tensor:
    """The indices :func:`real_images` takes: a fixed random subset of ``n`` (all if fewer), sorted."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(num_items, generator=g)[: min(n, num_items)].sort().values


def real_images(data, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` held-out images (a fixed random subset; all of them if fewer) in [-1, 1], with labels."""
    return data.batch(real_indices(len(data), n, seed))


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
    """A latent diffusion pipeline or a prior over codes (its folder's vqldm.json says which)."""
    from ..pipelines.prior_pipeline import is_prior_folder, load_prior_pipeline

    if is_prior_folder(model):
        return load_prior_pipeline(model, device=device)
    from ..pipelines.pipeline import load_pipeline

    return load_pipeline(model, device=device, freeze_unet=True)  # many batches: the frozen UNet pays off


def scheduler_label(pipe) -> str:
    """What samples: the scheduler class of a diffusion pipeline, or the kind of a prior."""
    kind = getattr(pipe, "kind", None)
    return f"{kind} prior" if kind else type(pipe.scheduler).__name__


@torch.inference_mode()
def prior_code_usage(pipe, codes: torch.Tensor, real: torch.Tensor, batch_size: int) -> dict:
    """The share of the codebook a prior emitted in ``codes`` (the grids behind the generated images, collected
    by :func:`generate_images`), next to the codes the autoencoder uses on the real images ``real``."""
    k = int(pipe.vqvae.config.num_vq_embeddings)
    emitted = torch.bincount(codes.flatten().cpu(), minlength=k)
    used = torch.zeros(k, dtype=torch.long)
    for part in real.split(batch_size):
        _, idx = encode_indices(pipe.vqvae, pipe.vqvae.encode(part.to(pipe.device)).latents)
        used += torch.bincount(idx.flatten().cpu(), minlength=k)
    emitted_set, used_set = emitted > 0, used > 0
    return {"codebook_size": k, "codes_emitted": int(emitted_set.sum()), "codes_used_on_real": int(used_set.sum()),
            "emitted_share_of_real_usage": float((emitted_set & used_set).sum()) / max(int(used_set.sum()), 1),
            "emitted_outside_real_usage": int((emitted_set & ~used_set).sum()),
            "samples": int(codes.shape[0]), "real_images": int(real.shape[0])}


def pipeline_data_fit(pipe, default: str = "pad") -> str:
    """How the training images were fitted to size (from the pipeline's vqldm.json), so real images match."""
    info = getattr(pipe, "info", None) or {}
    cfg = info.get("training_config") or {}
    return str((cfg.get("data") or {}).get("fit") or default)


def pipeline_num_classes(pipe) -> int | None:
    """Number of real classes of a class-conditional pipeline (its UNet has one extra null class), else None."""
    n = getattr(pipe, "num_classes", None)
    if n is None:
        n = unet_num_classes(pipe.unet.config)
    return int(n) or None


def generate_images(pipe, num_images: int, batch_size: int, steps: int, guidance: float, seed: int,
                    num_classes: int | None, progress: bool = True, desc: str = "generating",
                    codes_out: list | None = None) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """``num_images`` images in [-1, 1] (CPU), their class labels (balanced: i mod num_classes) or None, and
    the seconds spent per image. Batch b uses ``torch.Generator().manual_seed(seed + b)``, so results do not
    depend on anything but the arguments. ``codes_out`` (a list) collects a prior's code grids per batch."""
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
        result = pipe(**kwargs)
        if codes_out is not None and getattr(result, "codes", None) is not None:
            codes_out.append(result.codes.cpu())
        images = torch.as_tensor(result.images).float().cpu()
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
                kid_subsets: int = 100, kid_subset_size: int = 1000, progress: bool = True,
                calibration: list[dict] | None = None) -> list[dict]:
    """FID / KID and seconds per image for each (scheduler, steps); restores the pipeline's scheduler.

    With ``calibration`` (rows of :func:`calibration_rows` at ``num_samples`` probe images, computed once for
    the whole sweep), each row also says where its FID and KID fall on that scale (``fid_scale``, ``kid_scale``)."""
    original = getattr(pipe, "scheduler", None)  # a prior has none: its sweep is over decoding rounds
    rows = []
    try:
        for name in schedulers:
            pipe.set_scheduler(name)
            warm_up(pipe, batch_size, guidance, num_classes)
            for steps in steps_list:
                fake, _, spi = generate_images(pipe, num_samples, batch_size, steps, guidance, seed, num_classes, progress, f"{name} {steps} steps")
                fake_f = extractor(fake, progress, "features")
                m = distribution_metrics(real_f, fake_f, kid_subsets, kid_subset_size, seed, with_pr=False)
                row = {"scheduler": name, "steps": steps, "seconds_per_image": spi, **m}
                if calibration:
                    row["fid_scale"] = place_on_scale(m["fid"], calibration, "fd")
                    row["kid_scale"] = place_on_scale(m["kid_mean"], calibration, "kid_mean")
                rows.append(row)
    finally:
        if original is not None:
            pipe.scheduler = original
    return rows


# ----------------------------------------------------------------------------- calibration
# An FD / KID value means little alone: it depends on the features, the sample count (FD is biased up by
# ~1/n) and the split. Each measured value is therefore reported beside the same metric for known real
# images — two disjoint real sets (the sampling floor), real images blurred, real images with noise — in
# the same feature space, at the same sample counts, against the same reference set.
CALIBRATION_BLUR_SIGMAS = (0.5, 1.0)
CALIBRATION_NOISE_STD = 0.1  # in [-1, 1] units (0.05 of the [0, 1] range), clamped to [-1, 1]
REAL_ROW = "real-vs-real"


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ceil(3 sigma) (2 r + 1 taps, float64)."""
    radius = math.ceil(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of N x C x H x W images (e.g. [-1, 1]): kernel radius ceil(3 sigma), reflect
    padding, so the shape is kept and a constant image stays constant. ``sigma == 0`` returns a copy."""
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"blur sigma must be finite and >= 0, got {sigma}")
    if images.ndim != 4:
        raise ValueError(f"gaussian_blur takes N x C x H x W images, got shape {tuple(images.shape)}")
    if sigma == 0:
        return images.clone()
    n, c, h, w = images.shape
    k = gaussian_kernel1d(sigma)
    r = (k.numel() - 1) // 2
    if r >= min(h, w):
        raise ValueError(f"blur sigma {sigma} needs images larger than {r} px for reflect padding, got {h}x{w}")
    dtype = images.dtype if images.is_floating_point() else torch.float32
    k = k.to(device=images.device, dtype=dtype)
    x = images.to(dtype).reshape(n * c, 1, h, w)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return x.reshape(n, c, h, w)


def add_gaussian_noise(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """[-1, 1] images plus N(0, std²) noise per pixel (seeded, CPU generator), clamped to [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=g, dtype=torch.float32).to(device=images.device, dtype=images.dtype)
    return (images + std * noise).clamp(-1, 1)


def other_real_images(ds, exclude: torch.Tensor, n: int, seed: int, train_when_short: bool = False) -> tuple[torch.Tensor | None, str]:
    """Up to ``n`` real images disjoint from the held-out images ``exclude`` (indices), for the real-vs-real
    floor, and where they came from. The rest of the held-out split first (a fixed random subset); when it
    has fewer than ``n``: the training split if ``train_when_short`` (and it has ``n``), else what the
    held-out split has (the description gives the count); the training split when the held-out split has
    fewer than 2 others. ``(None, why)`` when there are not 2 images anywhere."""
    holdout = ds.holdout
    keep = torch.ones(len(holdout), dtype=torch.bool)
    keep[torch.as_tensor(exclude, dtype=torch.long)] = False
    rest = keep.nonzero().flatten()
    train = getattr(ds, "train", None)
    n_train = len(train) if train is not None else 0
    if len(rest) >= n or (len(rest) >= 2 and not (train_when_short and n_train >= n)):
        idx = rest[real_indices(len(rest), n, seed)]
        short = "" if len(idx) >= n else f" (only {len(idx)}: the held-out split has {len(holdout)} images, fewer than {len(exclude)} + {n})"
        return holdout.batch(idx)[0], f"{len(idx)} other held-out images{short}"
    if n_train >= 2:
        idx = real_indices(n_train, n, seed)
        short = "" if len(idx) >= n else f" (only {len(idx)})"
        return train.batch(idx)[0], f"{len(idx)} training-split images{short} (the held-out split has {len(rest)} others)"
    return None, f"no calibration: fewer than 2 real images besides the {len(exclude)} reference ones"


def calibration_rows(real_ref: torch.Tensor | None, real_probe: torch.Tensor, extractor: FeatureExtractor, *,
                     ref_features: torch.Tensor | None = None, paired: bool = False,
                     blur_sigmas: tuple[float, ...] = CALIBRATION_BLUR_SIGMAS, noise_std: float = CALIBRATION_NOISE_STD,
                     kid_subsets: int | None = None, kid_subset_size: int = 1000, seed: int = 0,
                     progress: bool = False) -> list[dict]:
    """The scale a measured FD / KID against the reference set ``real_ref`` is read on, one row each:

    * ``real-vs-real``: ``real_probe`` (other real images, as many as the measured set) vs ``real_ref`` — the
      floor: what sampling alone gives at these counts;
    * ``blur 0.5px``, ``blur 1px``: real images blurred (:func:`gaussian_blur`) vs ``real_ref``;
    * ``noise std 0.1``: real images plus clamped Gaussian noise vs ``real_ref``.

    The degraded images are made from ``real_probe`` (``paired=False``: the measured images are a sample
    independent of the reference, as generated images are), or from ``real_ref`` itself (``paired=True``: the
    measured images are made one-to-one from the reference images, as reconstructions are). Rows:
    ``{name, fd, kid_mean, kid_std, n, n_ref}``; KID (same subsets and seed as the measured KID) only when
    ``kid_subsets`` is given, else ``None``. ``ref_features``: the reference features when already computed."""
    ref_f = extractor(real_ref, progress, "features (calibration reference)") if ref_features is None else ref_features
    source = real_ref if paired else real_probe
    if source is None:
        raise ValueError("paired calibration needs the reference images")

    def row(name: str, feats: torch.Tensor) -> dict:
        kid_mean = kid_std = None
        if kid_subsets:
            kid_mean, kid_std = metrics.kernel_inception_distance(ref_f, feats, kid_subsets, kid_subset_size, seed)
        return {"name": name, "fd": metrics.fid_from_features(ref_f, feats), "kid_mean": kid_mean, "kid_std": kid_std,
                "n": int(feats.shape[0]), "n_ref": int(ref_f.shape[0])}

    rows = [row(REAL_ROW, extractor(real_probe, progress, "features (calibration: real)"))]
    for sigma in blur_sigmas:
        rows.append(row(f"blur {sigma:g}px", extractor(gaussian_blur(source, sigma), progress, f"features (calibration: blur {sigma:g}px)")))
    if noise_std:
        rows.append(row(f"noise std {noise_std:g}", extractor(add_gaussian_noise(source, noise_std, seed), progress, "features (calibration: noise)")))
    return rows


def calibration_setup(reference: str, real_vs_real: str, paired: bool, blur_sigmas: tuple[float, ...] = CALIBRATION_BLUR_SIGMAS,
                      noise_std: float = CALIBRATION_NOISE_STD) -> dict:
    """How the calibration rows were made (for report.json and the printed header)."""
    return {
        "reference": reference,
        "real_vs_real": real_vs_real,
        "degraded_images": ("the reference images themselves (paired, as the measured images are made from them)" if paired
                            else "the real-vs-real images (a sample independent of the reference, as the measured images are)"),
        "blur": "separable Gaussian on [-1, 1] images, kernel radius ceil(3 sigma), reflect padding",
        "blur_sigmas_px": list(blur_sigmas),
        "noise": "additive Gaussian in [-1, 1] units, clamped to [-1, 1]",
        "noise_std": noise_std,
        "paired": paired,
    }


def format_value(value: float) -> str:
    """Three significant digits, no exponent for large values."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def place_on_scale(value: float | None, rows: list[dict], key: str = "fd") -> str:
    """Where ``value`` falls among the calibration ``rows`` (their ``key`` values, sorted; rows without one
    are ignored): "between real-vs-real (0.9) and blur 0.5px (5.1)", "below the real-vs-real floor (0.9)",
    "above noise std 0.1 (40.2)", "at blur 1px (12.5)"."""
    if value is None or not math.isfinite(float(value)):
        return "not placed (no value)"
    points = sorted((float(r[key]), str(r["name"])) for r in rows if r.get(key) is not None and math.isfinite(float(r[key])))
    if not points:
        return "not placed (no calibration)"

    def label(point: tuple[float, str]) -> str:
        name = "the real-vs-real floor" if point[1] == REAL_ROW else point[1]
        return f"{name} ({format_value(point[0])})"

    value = float(value)
    for point in points:
        if value == point[0]:
            return f"at {label(point)}"
    if value < points[0][0]:
        return f"below {label(points[0])}"
    if value > points[-1][0]:
        return f"above {label(points[-1])}"
    upper = next(i for i, p in enumerate(points) if p[0] > value)
    return f"between {label(points[upper - 1])} and {label(points[upper])}"
