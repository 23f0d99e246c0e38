"""The scale every FD / KID is read on, and where a measured value falls on it.

An FD / KID value means little alone: it depends on the features, the sample count (FD is biased up by
~1/n) and the split. Each measured value is therefore reported beside the same metric for known real
images -- two disjoint real sets (the sampling floor), real images blurred, real images with noise -- in
the same feature space, at the same sample counts, against the same reference set
(:func:`calibration_rows`), and with a line saying where it falls among them (:func:`place_on_scale`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import metrics
from .features import FeatureExtractor

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


def format_calibration(rows: list[dict], setup: dict, metric: str | None = None, value: float | None = None,
                       indent: str = "    ") -> str:
    """Where ``metric`` = ``value`` falls on the calibration scale (when given), the scale's header, and one
    line per calibration row (name, FD, KID mean when computed, sample count)."""
    if not rows:
        return f"{indent}calibration: - ({setup['real_vs_real']})"
    with_kid = any(r.get("kid_mean") is not None for r in rows)
    lines = [f"{indent}{metric} {format_value(value)} on this scale: {place_on_scale(value, rows)}"] if metric else []
    lines += [f"{indent}calibration vs {setup['reference']}; real-vs-real: {setup['real_vs_real']}; "
             f"blur (Gaussian, reflect) and noise (std {setup['noise_std']:g}, clamped) of "
             + ("the same originals (paired)" if setup["paired"] else "those other images"),
             f"{indent}  {'':<14} {'FD':>9}" + (f" {'KID mean':>10}" if with_kid else "") + f" {'n':>6}"]
    for r in rows:
        kid = "" if not with_kid else f" {r['kid_mean']:>10.4g}" if r.get("kid_mean") is not None else f" {'-':>10}"
        lines.append(f"{indent}  {r['name']:<14} {r['fd']:>9.3f}{kid} {r['n']:>6}")
    return "\n".join(lines)
