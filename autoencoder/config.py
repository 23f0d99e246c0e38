"""Typed configuration of a stage-1 run: ``data``, ``model``, ``quantizer``, ``loss``, ``train``.

YAML presets live in ``configs/autoencoder/``; ``--set section.key=value`` overrides one key (the
generic loader is ``vqldm.plumbing.config``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..plumbing.config import load_config
from ..plumbing.data import DataConfig
from ..plumbing.trainkit import TrainLoopConfig
from .losses import LossConfig
from .model import AutoencoderModelConfig
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
