"""Typed configuration of a stage-1 run: ``data``, ``model``, ``quantizer``, ``loss``, ``train``.

YAML presets live in ``configs/autoencoder/``; ``--set section.key=value`` overrides one key (the
generic loader is ``vqldm.plumbing.config``). ``--config auto`` picks and sizes a preset for the data and
device (:func:`auto_autoencoder_config`; the rules are in ``vqldm.plumbing.autoconfig``), and stage 2
sizes itself from a trained autoencoder's :func:`autoencoder_geometry`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..plumbing.autoconfig import DataSummary, choose_autoencoder
from ..plumbing.config import load_config, read_yaml
from ..plumbing.data import DataConfig
from ..plumbing.errors import UserError
from ..plumbing.geometry import latent_shape, size_hw
from ..plumbing.trainkit import TrainLoopConfig
from .losses import LossConfig
from .model import AutoencoderModelConfig, find_vqvae_folder
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


@dataclass
class AutoencoderGeometry:
    """What a stage trained on an autoencoder's latents needs to size itself, read from config files only."""

    image_size: int
    channels: int
    latent: tuple[int, int, int]  # (C, H, W) of the pre-quantization latents
    codebook_size: int
    source: str | None  # the data the autoencoder was trained on (its run's config.yaml)

    def describe(self) -> str:
        c, h, w = self.latent
        return f"autoencoder {self.channels}x{self.image_size}x{self.image_size} -> {c}x{h}x{w} latents"


def autoencoder_geometry(path) -> AutoencoderGeometry:
    """Image size, channels, latent shape and codebook of the autoencoder at ``path`` (a run folder or a
    VQModel folder), from its ``config.json`` and its run's ``config.yaml``: no weights are loaded."""
    folder, run_dir = find_vqvae_folder(path)
    try:
        vq = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{str(folder / 'config.json')!r} is not readable JSON; re-export the autoencoder") from None
    data = (read_yaml(run_dir / "config.yaml").get("data") or {}) if run_dir is not None else {}
    image_size = int(data.get("image_size") or size_hw(vq.get("sample_size", 32))[0])
    channels = int(data.get("channels") or vq.get("in_channels", 3))
    return AutoencoderGeometry(image_size, channels, latent_shape(vq, image_size), int(vq.get("num_vq_embeddings", 0)),
                               data.get("source"))
