"""Typed configuration of a stage-1 run: ``data``, ``model``, ``quantizer``, ``loss``, ``train``.

YAML presets live in ``configs/autoencoder/``; ``--set section.key=value`` overrides one key (the
generic loader is ``vqldm.plumbing.config``). ``--config auto`` picks and sizes a preset for the data and
device (:func:`auto_autoencoder_config`; the rules are :func:`choose_autoencoder` below and ``vqldm.plumbing.autosize``), and stage 2
sizes itself from a trained autoencoder's :func:`autoencoder_geometry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.config import DataConfig
from ..data.summary import DataSummary, check_fits
from ..plumbing.autosize import AutoChoice, batch_for, is_gpu, nearest_size, passes_to_steps, schedule_for
from ..plumbing.config import load_config, read_yaml, resolve_config_path
from ..plumbing.errors import UserError
from ..plumbing.trainkit import TrainLoopConfig
from .losses import LossConfig
from .model import AutoencoderModelConfig
from .fsq import fsq_levels
from .quantizer import QuantizerConfig


@dataclass
class AutoencoderTrainConfig(TrainLoopConfig):
    scaling_max_images: int | None = 10_000  # training images used to measure 1/std(h)
    eval_max_images: int | None = None  # held-out images for the final metrics (None = all)
    eval_batch_size: int = 256


@dataclass
class AutoencoderRunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: AutoencoderModelConfig = field(default_factory=AutoencoderModelConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)

    def __post_init__(self):
        # fsq: its levels fit the codebook vectors and their product is the codebook (validated, never
        # changed); without levels they are derived from both, and written here so config.yaml records them
        if self.quantizer.kind == "fsq":
            m = self.model
            try:
                self.quantizer.levels = fsq_levels(self.quantizer.levels, m.vq_embed_dim or m.latent_channels, m.codebook_size)
            except ValueError as err:
                raise UserError(str(err)) from None
        # a growing codebook grows up to the table's K rows (the exported VQModel always has K)
        grow, k = self.quantizer.grow_from, self.model.codebook_size
        if grow is not None and grow >= k:
            raise UserError(f"quantizer.grow_from={grow} must be below model.codebook_size={k} (it grows up to it); "
                            f"lower it or remove it for a fixed codebook")


def load_autoencoder_config(path, overrides=()) -> AutoencoderRunConfig:
    """A YAML path or preset name from ``configs/autoencoder/``, with ``--set`` overrides applied."""
    return load_config(AutoencoderRunConfig, path, overrides, stage="autoencoder")


def auto_autoencoder_config(summary: DataSummary, device: str, overrides=(), max_steps: int | None = None
                            ) -> tuple[AutoencoderRunConfig, str]:
    """``--config auto``: the run config sized for ``summary`` on ``device`` (``--set`` overrides applied
    last) and the one line that says what was chosen."""
    choice = choose_autoencoder(summary, device)
    cfg = load_config(AutoencoderRunConfig, choice.preset, overrides, stage="autoencoder", sized=choice.overrides)
    d, m, t = cfg.data, cfg.model, cfg.train
    f = m.downsampling_factor
    latent = f"{m.vq_embed_dim or m.latent_channels}x{d.image_size // f}x{d.image_size // f}"
    line = (f"auto config: {summary.describe()}, {device} -> preset {choice.preset!r}, image_size {d.image_size} "
            f"(fit {d.fit}), f{f} -> {latent} latents, {m.codebook_size} codes, batch {t.batch_size}, "
            f"{max_steps or t.max_steps} steps")
    return cfg, line


# Image sizes: the one nearest to the median shorter side (in scale), at most 32 px on CPU -- measured on
# 2 cores, 64 px runs ~7x slower per step than 32 px (4.1 vs 0.57 s at batch 64) -- and 256 px on GPU.
CPU_SIZES = (16, 32)


GPU_SIZES = (16, 32, 64, 128, 256)


GPU_LDM_MIN_SIZE = 128  # from 128 px on a GPU: the LDM f4 autoencoder (64x64x3 latents at 256 px)


GPU_F8_MIN_IMAGES = 100_000  # large datasets: f8 (4x fewer latent positions for the UNet)


def choose_autoencoder(summary: DataSummary, device: str) -> AutoChoice:
    """Preset + overrides of the stage-1 run for these data on this device (labels are left alone: the
    autoencoder needs none, and ``--labels folders`` reaches it as an override)."""
    check_fits(summary)
    n = summary.count
    data = {"source": summary.source, "channels": summary.channels}
    if summary.kind in ("folder", "hf", "shards"):
        data["fit"] = "resize"  # shorter side to size, then a center crop: any aspect ratio, no borders
    if summary.kind == "named" and summary.channels == 1:
        # the preset measured on these very images (docs/results.md); minutes on a GPU
        return AutoChoice("fashion-mnist", {"data": {"source": summary.source}})
    if not is_gpu(device):
        preset, batch = "small", batch_for(n, 64)
        data["image_size"] = nearest_size(summary.median_side, CPU_SIZES)
        # 40 passes, 500-2000 steps: ~5-20 minutes at ~0.6 s per step (32 px, batch 64, one core)
        train = schedule_for(passes_to_steps(n, batch, 40, 500, 2000), 100, 250)
    else:
        size = data["image_size"] = nearest_size(summary.median_side, GPU_SIZES)
        if size >= GPU_LDM_MIN_SIZE:
            preset = "ldm-vq-f8-256" if size == 256 and n >= GPU_F8_MIN_IMAGES else "ldm-vq-f4-256"
            batch = batch_for(n, 12)
            # the preset's 200k steps at batch 12 are ~80 passes over a CelebA-HQ-sized set (30k images)
            train = schedule_for(passes_to_steps(n, batch, 80, 5_000, 200_000), 0, 5_000)
        else:
            preset, batch = "cifar10", batch_for(n, 128)
            # the cifar10 preset's 128 passes (50k steps at batch 128 over 50k images)
            train = schedule_for(passes_to_steps(n, batch, 128, 5_000, 50_000), 500, 2_500)
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
