"""Typed configuration of a stage-2 run: ``data``, ``model``, ``objective``, ``cache``, ``train``.

YAML presets live in ``configs/diffusion/``; ``--set section.key=value`` overrides one key. The latent
shape is never typed here: channels and size come from the autoencoder (its ``vqvae`` config and, for a
vqldm run folder, its ``config.yaml``), so the two stages cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from ..autoencoder.model import autoencoder_geometry, downsampling_factor
from ..data.summary import DataSummary, check_fits, describe_data
from ..latents.cache import CacheConfig
from ..latents.setup import LatentDataConfig
from ..plumbing.autosize import AutoChoice, batch_for, is_gpu, passes_to_steps, schedule_for
from ..plumbing.config import load_config
from ..plumbing.trainkit import EMATrainLoopConfig
from ..text.config import TextConfig


@dataclass
class UNetConfig:
    """Architecture of the latent ``diffusers.UNet2DModel``.

    ``sample_size`` and in/out channels are not here: they are the autoencoder's latent size and
    ``latent_channels``. One entry of ``block_out_channels`` per resolution level (level 0 = the full
    latent grid, each next level halves it); ``attention[i]`` puts self-attention in level ``i``.
    """

    block_out_channels: list[int] = field(default_factory=lambda: [64, 128, 128])
    attention: list[bool] = field(default_factory=lambda: [False, True, True])
    layers_per_block: int = 2
    attention_head_dim: int = 32  # channels per attention head (LDM: num_head_channels = 32)
    mid_block_attention: bool = True
    norm_num_groups: int = 32
    dropout: float = 0.0
    class_conditional: bool = False  # needs labels; adds a null class for classifier-free guidance
    # super-resolution (LDM): the UNet also sees the image downsampled to the latent grid (antialiased bicubic)
    # and learns the latents of the full image: an upscaler by the autoencoder's factor f
    superresolution: bool = False

    def __post_init__(self):
        if not self.block_out_channels:
            raise ValueError("model.block_out_channels must list at least one width")
        if len(self.attention) != len(self.block_out_channels):
            raise ValueError(
                f"model.attention has {len(self.attention)} entries but model.block_out_channels has "
                f"{len(self.block_out_channels)}; give one true/false per level"
            )
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"model.block_out_channels {bad} must be divisible by model.norm_num_groups={self.norm_num_groups}")
        if self.layers_per_block < 1:
            raise ValueError(f"model.layers_per_block must be >= 1, got {self.layers_per_block}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")

    @property
    def downsampling_factor(self) -> int:
        return downsampling_factor(len(self.block_out_channels))


PredictionType = Literal["epsilon", "v_prediction", "sample"]
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]


@dataclass
class ObjectiveConfig:
    """What the UNet predicts, the noise schedule (diffusers' names), loss weighting, label dropout."""

    prediction_type: PredictionType = "epsilon"
    beta_schedule: BetaSchedule = "scaled_linear"
    # LDM (Rombach et al. 2022) trains every latent model with scaled_linear betas from 0.0015 to 0.0195
    # over 1000 steps (linear_start / linear_end in its configs); ignored by squaredcos_cap_v2 (cosine,
    # Nichol & Dhariwal 2021).
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    num_train_timesteps: int = 1000
    # Min-SNR-γ loss weighting (Hang et al. 2023): None = off (uniform weights); γ = 5 is the paper's value.
    min_snr_gamma: float | None = None
    # Classifier-free guidance (Ho & Salimans 2022): drop the label to the null class with probability p;
    # p = 0.1 as in the paper and in DiT.
    label_dropout: float = 0.1  # text models: the probability a caption is replaced by the empty prompt

    def __post_init__(self):
        if self.num_train_timesteps < 2:
            raise ValueError(f"objective.num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError(f"need 0 < objective.beta_start < objective.beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ValueError(f"objective.min_snr_gamma must be > 0 or null, got {self.min_snr_gamma}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"objective.label_dropout must be in [0, 1), got {self.label_dropout}")


@dataclass
class DiffusionTrainConfig(EMATrainLoopConfig):
    """Loop settings; ``image_every`` is how often a grid of EMA samples is written to ``RUN/images``."""

    lr: float = 1e-4
    adam_betas: list[float] = (0.9, 0.999)
    ema_decay: float = 0.9999  # LDM / DiT
    sample_steps: int = 50  # DDIM steps for the periodic sample grids
    sample_guidance: float = 2.0  # classifier-free guidance scale of the grids (class-conditional models)

    def __post_init__(self):
        super().__post_init__()
        if self.sample_steps < 1:
            raise ValueError("train.sample_steps must be >= 1")


@dataclass
class DiffusionRunConfig:
    data: LatentDataConfig = field(default_factory=LatentDataConfig)
    model: UNetConfig = field(default_factory=UNetConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    train: DiffusionTrainConfig = field(default_factory=DiffusionTrainConfig)
    text: TextConfig = field(default_factory=TextConfig)  # text.encoder set: a text-to-image model (captions)

    def __post_init__(self):
        if self.model.superresolution and (self.text.enabled or self.model.class_conditional):
            raise ValueError("model.superresolution is conditioned on the low-resolution image only; drop text.encoder and "
                             "model.class_conditional (--set model.class_conditional=false)")
        if self.text.enabled and self.model.class_conditional:
            raise ValueError("model.class_conditional and text.encoder are both set; a model is conditioned on classes or on "
                             "text: --set model.class_conditional=false for a text model")


def auto_diffusion_config(autoencoder, data: str | None, labels: str | None, device: str, overrides=(),
                          max_steps: int | None = None) -> tuple[DiffusionRunConfig, str]:
    """``--config auto``: the run config sized for the data (``--data``, else the autoencoder's), their labels
    and the autoencoder's latent grid on ``device`` (``--set`` overrides applied last), and the one line
    that says what was chosen. Image size and channels stay the autoencoder's (data.* = None)."""
    geometry = autoencoder_geometry(autoencoder)
    summary = describe_data(data or geometry.source, labels)
    if summary.captioned and summary.num_classes and labels != "folders":
        # a caption says more than a folder name: text-to-image, unless --labels folders asks for classes
        summary = replace(summary, labels="none", class_names=[])
    choice = choose_diffusion(summary, geometry.latent, device)
    cfg = load_config(DiffusionRunConfig, choice.preset, overrides, stage="diffusion", sized=choice.overrides)
    m, t = cfg.model, cfg.train
    kind = "text-to-image" if cfg.text.enabled else "class-conditional" if m.class_conditional else "unconditional"
    line = (f"auto config: {summary.describe()}, {geometry.describe()}, {device} -> preset {choice.preset!r}, "
            f"{kind} UNet {'-'.join(map(str, m.block_out_channels))}, batch {t.batch_size}, {max_steps or t.max_steps} steps")
    return cfg, line


def _latent_family(latent_hw: tuple[int, int], device: str) -> str:
    if not is_gpu(device):
        return "small"
    return "celebahq-256" if min(latent_hw) >= 32 else "cifar10"


# The text-to-image preset of each size family; cifar10's has none, so it gets the scratch text encoder.
TEXT_PRESETS = {"small": "small-text", "celebahq-256": "text-256"}


def choose_diffusion(summary: DataSummary, latent: tuple[int, int, int], device: str) -> AutoChoice:
    """Preset + overrides of the latent-diffusion run on an autoencoder's ``latent`` (C, H, W) grid: text-to-
    image when every image has a caption and there are no classes, else class-conditional or unconditional."""
    check_fits(summary)
    n = summary.count
    family = _latent_family(latent[1:], device)
    text = summary.captioned and not summary.num_classes
    preset = TEXT_PRESETS.get(family, family) if text else family
    data = {"source": summary.source}
    if summary.kind in ("folder", "shards"):
        data["labels"] = summary.labels
    model = {"class_conditional": summary.num_classes > 0}
    if family == "small":
        batch = batch_for(n, 64)
        # 200 passes, 1000-4000 steps: at most the Fashion-MNIST preset's run (~20-25 minutes on 2 cores)
        train = schedule_for(passes_to_steps(n, batch, 200, 1_000, 4_000), 200, 500)
    elif family == "cifar10":
        batch = batch_for(n, 128)
        # the cifar10 preset's 256 passes (100k steps at batch 128 over 50k images)
        train = schedule_for(passes_to_steps(n, batch, 256, 10_000, 100_000), 1_000, 5_000)
    else:
        batch = batch_for(n, 48)
        # LDM's CelebA-HQ model: 410k steps at batch 48 over 30k images, ~650 passes
        train = schedule_for(passes_to_steps(n, batch, 650, 20_000, 410_000), 10_000, 5_000)
    train["batch_size"] = batch
    sized = {"data": data, "model": model, "train": train}
    if text and preset == family:
        sized["text"] = {"encoder": "scratch"}
    return AutoChoice(preset, sized)


def load_diffusion_config(path, overrides=()) -> DiffusionRunConfig:
    """A YAML path or preset name from ``configs/diffusion/``, with ``--set`` overrides applied."""
    return load_config(DiffusionRunConfig, path, overrides, stage="diffusion")
