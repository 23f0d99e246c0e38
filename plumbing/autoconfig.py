"""``--config auto``: read the data and the device, then pick a preset and the overrides that size it.

* :func:`describe_data` reads what sizing needs -- image count, channels, size distribution, class
  subfolders -- from file names and image *headers* of a bounded sample (PIL opens a file without
  decoding its pixels): at most 500 headers, however large the folder. Named datasets are known
  constants.
* ``choose_autoencoder`` / ``choose_diffusion`` / ``choose_prior`` turn a summary and a device into an
  :class:`AutoChoice`: a preset name and a nested dict of overrides applied on top of it (``--set``
  still applies last). The stages build their run configs from it (``autoencoder.config.auto_autoencoder_config``
  and its siblings): the bottom layer never imports a stage.

The rules (each constant below says why it has its value):

* Image size: the one nearest (in scale) to the median image's shorter side; images are resized to it
  (shorter side, then a center crop).
* CPU: a small model (preset ``small``, ~0.6 s per step at 32 px on one core) at 16 or 32 px (64 px
  costs ~7x more per step on CPU). Named grayscale datasets keep their ``fashion-mnist`` preset.
* GPU: images of ~181 px and more -> the LDM f4 shape at 256 px (``ldm-vq-f4-256``; the f8 shape
  ``ldm-vq-f8-256`` for >= 100k images); ~91-180 px -> the f4 shape at 128 px; smaller -> the
  ``cifar10`` shape at 16-64 px. Stage 2 takes the matching UNet (``celebahq-256`` on >= 32x32 latents,
  else ``cifar10``; ``small`` on CPU).
* Class subfolders (every image in one, at least two, not numbered shards like FFHQ's 00000/) ->
  class-conditional stage 2 (``--labels none`` turns it off). The autoencoder needs no labels.
* Presets with an adversarial term start it at half the run at the latest, at full weight by three
  quarters of the run (the ramp shortened to fit).
* Batch from the preset (smaller for tiny folders), steps from the image count: a number of passes over
  the data, clamped to a range per stage and device.
* No config fits fewer than :data:`MIN_IMAGES` images or images under 8 px: a one-line UserError with
  what to do instead.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .config import read_yaml, resolve_config_path
from .data import HF_PREFIX, hf_layout, hf_load
from .decode import IMAGE_SUFFIXES
from .errors import UserError
from .folder_index import scan_folder

AUTO = "auto"  # the --config value

# Named datasets: (train images, channels, height, width, classes); never downloaded just to be described.
NAMED = {
    "fashion-mnist": (60_000, 1, 28, 28, 10),
    "mnist": (60_000, 1, 28, 28, 10),
    "cifar10": (50_000, 3, 32, 32, 10),
}
SAMPLE_HEADERS = 500  # image headers read to learn modes and sizes (spread over the sorted file list)
MIN_IMAGES = 8  # below this no run is worth sizing: a model would memorise a handful of pictures
MIN_SIDE = 8  # data.image_size must be >= 8 (and smaller images have nothing to compress)
COLOUR_SHARE = 0.1  # colour if at least this share of the sampled images is colour: grey copies of them lose it
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# Image sizes: the one nearest to the median shorter side (in scale), at most 32 px on CPU -- measured on
# 2 cores, 64 px runs ~7x slower per step than 32 px (4.1 vs 0.57 s at batch 64) -- and 256 px on GPU.
CPU_SIZES = (16, 32)
GPU_SIZES = (16, 32, 64, 128, 256)
GPU_LDM_MIN_SIZE = 128  # from 128 px on a GPU: the LDM f4 autoencoder (64x64x3 latents at 256 px)
GPU_F8_MIN_IMAGES = 100_000  # large datasets: f8 (4x fewer latent positions for the UNet)


@dataclass
class DataSummary:
    """What ``--config auto`` knows about the data: counts from file names, modes and sizes from headers."""

    source: str
    kind: str  # "folder", "hf" or "named"
    count: int  # image files (by extension) or the named dataset's training images
    channels: int  # 1 or 3
    median_hw: tuple[int, int]
    min_side: int  # shorter sides over the sample
    max_side: int
    median_side: int  # median shorter side: what a resize to a square keeps
    labels: str = "none"  # "folders" when class subfolders will be used
    class_names: list[str] = field(default_factory=list)
    subfolders: int = 0  # first-level subfolders holding images (classes or not)
    sampled: int = 0  # headers read (folders)

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.labels != "none" else 0

    def describe(self) -> str:
        """``1,432 RGB images (median 64x64, no labels)``"""
        colour = "RGB" if self.channels == 3 else "grayscale"
        h, w = self.median_hw
        if self.num_classes:
            labels = f"{self.num_classes} classes"
        elif self.subfolders > 1 and self.kind == "folder":
            labels = f"no labels; {self.subfolders} subfolders"
        else:
            labels = "no labels"
        return f"{self.count:,} {colour} image{'s' if self.count != 1 else ''} (median {h}x{w}, {labels})"


@dataclass
class AutoChoice:
    """A preset and the overrides that size it for the data and device (``--set`` applies on top)."""

    preset: str
    overrides: dict


def detect_device() -> str:
    """"cuda" when a GPU is visible, else "cpu" (what accelerate will train on)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def is_gpu(device: str) -> bool:
    return str(device).split(":")[0] == "cuda"


# ----------------------------------------------------------------------------- describing the data
def _looks_like_classes(names: list[str]) -> bool:
    """Class subfolders, not shards: FFHQ-style numbered chunks (00000/, 01000/, ...) are not classes."""
    if len(names) < 2:
        return False
    shards = all(n.isdigit() for n in names) and len({len(n) for n in names}) == 1 and len(names[0]) >= 3
    return not shards


def describe_data(source: str | os.PathLike | None, labels: str | None = None) -> DataSummary:
    """Summarise ``source`` (an image folder, ``hf:NAME`` or a named dataset) for sizing a run.

    ``labels``: "folders" or "none" as the user asked, or None to decide: first-level subfolders are
    classes when every image is in one, there are at least two, and they are not numbered shards.
    """
    if not source:
        raise UserError("--config auto needs --data: an image folder, or one of " + ", ".join(NAMED))
    if str(source).startswith(HF_PREFIX):
        return _describe_hf(str(source)[len(HF_PREFIX):], labels)
    path = Path(source).expanduser()
    if not path.exists():
        name = str(source).lower()
        if name in NAMED:
            count, channels, h, w, classes = NAMED[name]
            use = "none" if labels == "none" else "folders"  # named datasets come labelled
            return DataSummary(name, "named", count, channels, (h, w), min(h, w), min(h, w), min(h, w),
                               labels=use, class_names=[str(i) for i in range(classes)])
        raise UserError(f"data path {str(source)!r} not found; pass an existing image folder or one of: {', '.join(NAMED)}")
    if not path.is_dir():
        raise UserError(f"--data {str(source)!r} is a file, not a folder of images; pass its folder or a named dataset")

    images = [p for p in scan_folder(path) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise UserError(f"no images in {str(path)!r} (PNG, JPEG, WebP, ...; subfolders are searched); --config auto sizes a run from them")
    firsts = [p.relative_to(path).parts for p in images]
    subfolders = sorted({parts[0] for parts in firsts if len(parts) > 1})
    loose = sum(1 for parts in firsts if len(parts) == 1)
    if labels == "folders":
        if not subfolders:
            raise UserError(f"--labels folders needs one subfolder per class in {str(path)!r}, found none")
        use = "folders"
    elif labels == "none":
        use = "none"
    else:
        use = "folders" if loose == 0 and _looks_like_classes(subfolders) else "none"

    k = min(SAMPLE_HEADERS, len(images))
    picks = sorted({round(i * (len(images) - 1) / max(1, k - 1)) for i in range(k)})
    sizes, colour = [], 0
    for i in picks:
        try:
            with Image.open(images[i]) as img:  # reads the header only; pixels stay on disk
                w, h = img.size
                mode = img.mode
        except Exception:  # unreadable files are the loader's to skip and count
            continue
        sizes.append((h, w))
        colour += mode not in GRAY_MODES
    if not sizes:
        raise UserError(f"none of the {len(picks)} sampled files in {str(path)!r} opens as an image; check the files")
    sides = [min(h, w) for h, w in sizes]
    return DataSummary(
        source=str(path), kind="folder", count=len(images),
        channels=3 if colour >= COLOUR_SHARE * len(sizes) else 1,
        median_hw=(int(statistics.median_low(h for h, _ in sizes)), int(statistics.median_low(w for _, w in sizes))),
        min_side=min(sides), max_side=max(sides), median_side=int(statistics.median_low(sides)),
        labels=use, class_names=subfolders if use == "folders" else [], subfolders=len(subfolders), sampled=len(sizes),
    )


def _describe_hf(name: str, labels: str | None) -> DataSummary:
    """A Hugging Face dataset: rows of the training split, image headers of a sample (the bytes are read,
    not decoded), its ClassLabel column as classes unless ``--labels none``."""
    import io

    import datasets as hf

    layout = hf_layout(name, hf_load(name))
    train = layout.splits[layout.train].cast_column(layout.image_column, hf.Image(decode=False))
    n = len(train)
    k = min(SAMPLE_HEADERS, n)
    sizes, colour = [], 0
    for i in sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)}):
        value = train[i][layout.image_column] or {}
        try:
            with Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")) as img:
                w, h = img.size
                colour += img.mode not in GRAY_MODES
        except Exception:  # unreadable rows are the loader's to report
            continue
        sizes.append((h, w))
    if not sizes:
        raise UserError(f"none of the sampled rows of hf:{name} opens as an image; check the dataset")
    sides = [min(h, w) for h, w in sizes]
    use = "folders" if layout.class_names and labels != "none" else "none"
    return DataSummary(
        source=HF_PREFIX + name, kind="hf", count=n, channels=3 if colour >= COLOUR_SHARE * len(sizes) else 1,
        median_hw=(int(statistics.median_low(h for h, _ in sizes)), int(statistics.median_low(w for _, w in sizes))),
        min_side=min(sides), max_side=max(sides), median_side=int(statistics.median_low(sides)),
        labels=use, class_names=layout.class_names if use == "folders" else [], sampled=len(sizes),
    )


def check_fits(summary: DataSummary) -> None:
    """The data no config fits: a one-line UserError with what to do instead."""
    if summary.count < MIN_IMAGES:
        raise UserError(
            f"--config auto: {summary.count} image{'s' if summary.count != 1 else ''} in {summary.source!r} is too few to size a "
            f"run for (at least {MIN_IMAGES}; a few hundred for a useful model); add images, or pass a preset such as --config tiny"
        )
    if summary.median_side < MIN_SIDE:
        h, w = summary.median_hw
        raise UserError(
            f"--config auto: the images in {summary.source!r} are too small (median {h}x{w}; the smallest model takes "
            f"{MIN_SIDE} px); upscale them to at least 16 px, or pass a preset with --set data.image_size=16"
        )


# ----------------------------------------------------------------------------- sizing rules
def _steps(count: int, batch: int, epochs: float, lo: int, hi: int) -> int:
    """``epochs`` passes over ``count`` images at ``batch``, clamped to [lo, hi], rounded to 100 steps."""
    steps = epochs * count / batch
    return int(min(hi, max(lo, round(steps / 100) * 100)))


def _batch(count: int, preset_batch: int) -> int:
    """The preset's batch, or the largest power of two a tiny folder fills (at least 8)."""
    return max(8, min(preset_batch, 2 ** int(math.log2(max(1, count)))))


def _schedule(steps: int, warmup: int, every: int) -> dict:
    """Warm-up at most a tenth of the run; checkpoints and grids every ``every`` steps, and at least four
    times per run (in whole hundreds)."""
    every = min(every, max(100, steps // 4 // 100 * 100))
    return {"max_steps": steps, "warmup_steps": min(warmup, steps // 10), "checkpoint_every": every, "image_every": every}


def _nearest_size(side: int, sizes: tuple[int, ...]) -> int:
    """The size nearest to ``side`` in scale (log2): 28 px -> 32, 20 -> 16, 181 and up -> 256."""
    return min(sizes, key=lambda s: (abs(math.log2(s / side)), -s))


def choose_autoencoder(summary: DataSummary, device: str) -> AutoChoice:
    """Preset + overrides of the stage-1 run for these data on this device (labels are left alone: the
    autoencoder needs none, and ``--labels folders`` reaches it as an override)."""
    check_fits(summary)
    n = summary.count
    data = {"source": summary.source, "channels": summary.channels}
    if summary.kind in ("folder", "hf"):
        data["fit"] = "resize"  # shorter side to size, then a center crop: any aspect ratio, no borders
    if summary.kind == "named" and summary.channels == 1:
        # the preset measured on these very images (docs/results.md); minutes on a GPU
        return AutoChoice("fashion-mnist", {"data": {"source": summary.source}})
    if not is_gpu(device):
        preset, batch = "small", _batch(n, 64)
        data["image_size"] = _nearest_size(summary.median_side, CPU_SIZES)
        # 40 passes, 500-2000 steps: ~5-20 minutes at ~0.6 s per step (32 px, batch 64, one core)
        train = _schedule(_steps(n, batch, 40, 500, 2000), 100, 250)
    else:
        size = data["image_size"] = _nearest_size(summary.median_side, GPU_SIZES)
        if size >= GPU_LDM_MIN_SIZE:
            preset = "ldm-vq-f8-256" if size == 256 and n >= GPU_F8_MIN_IMAGES else "ldm-vq-f4-256"
            batch = _batch(n, 12)
            # the preset's 200k steps at batch 12 are ~80 passes over a CelebA-HQ-sized set (30k images)
            train = _schedule(_steps(n, batch, 80, 5_000, 200_000), 0, 5_000)
        else:
            preset, batch = "cifar10", _batch(n, 128)
            # the cifar10 preset's 128 passes (50k steps at batch 128 over 50k images)
            train = _schedule(_steps(n, batch, 128, 5_000, 50_000), 500, 2_500)
    train["batch_size"] = batch
    sized = {"data": data, "train": train}
    loss = read_yaml(resolve_config_path(preset, "autoencoder")).get("loss") or {}
    if loss.get("disc_weight", 0) > 0:
        steps = train["max_steps"]
        # the adversarial term after half the run at the latest (taming starts it once reconstructions are good),
        # and at full weight by three quarters of the run (its ramp shortened to fit)
        start = min(int(loss.get("disc_start", 0)), steps // 2)
        ramp = min(int(loss.get("disc_ramp_steps", 0)), max(0, (3 * steps) // 4 - start))
        changed = {k: v for k, v in (("disc_start", start), ("disc_ramp_steps", ramp)) if v != loss.get(k, 0)}
        if changed:
            sized["loss"] = changed
    return AutoChoice(preset, sized)


def _latent_family(latent_hw: tuple[int, int], device: str) -> str:
    if not is_gpu(device):
        return "small"
    return "celebahq-256" if min(latent_hw) >= 32 else "cifar10"


def choose_diffusion(summary: DataSummary, latent: tuple[int, int, int], device: str) -> AutoChoice:
    """Preset + overrides of the latent-diffusion run on an autoencoder's ``latent`` (C, H, W) grid."""
    check_fits(summary)
    n = summary.count
    preset = _latent_family(latent[1:], device)
    data = {"source": summary.source}
    if summary.kind == "folder":
        data["labels"] = summary.labels
    model = {"class_conditional": summary.num_classes > 0}
    if preset == "small":
        batch = _batch(n, 64)
        # 200 passes, 1000-4000 steps: at most the Fashion-MNIST preset's run (~20-25 minutes on 2 cores)
        train = _schedule(_steps(n, batch, 200, 1_000, 4_000), 200, 500)
    elif preset == "cifar10":
        batch = _batch(n, 128)
        # the cifar10 preset's 256 passes (100k steps at batch 128 over 50k images)
        train = _schedule(_steps(n, batch, 256, 10_000, 100_000), 1_000, 5_000)
    else:
        batch = _batch(n, 48)
        # LDM's CelebA-HQ model: 410k steps at batch 48 over 30k images, ~650 passes
        train = _schedule(_steps(n, batch, 650, 20_000, 410_000), 10_000, 5_000)
    train["batch_size"] = batch
    return AutoChoice(preset, {"data": data, "model": model, "train": train})


def choose_prior(summary: DataSummary, latent: tuple[int, int, int], device: str) -> AutoChoice:
    """Preset + overrides of a prior over an autoencoder's codes (one size: the ``small`` transformer)."""
    check_fits(summary)
    n = summary.count
    data = {"source": summary.source}
    if summary.kind == "folder":
        data["labels"] = summary.labels
    batch = _batch(n, 64)
    # 150 passes; on CPU at most the Fashion-MNIST preset's 3000 steps (~15 minutes on 2 cores)
    train = _schedule(_steps(n, batch, 150, 1_000, 3_000 if not is_gpu(device) else 20_000), 200, 500)
    train["batch_size"] = batch
    return AutoChoice("small", {"data": data, "model": {"class_conditional": summary.num_classes > 0}, "train": train})
