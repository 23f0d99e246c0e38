"""Typed configuration of a prior run: ``data``, ``model``, ``objective``, ``sampling``, ``cache``, ``train``.

YAML presets live in ``configs/prior/``; ``--set section.key=value`` overrides one key. The grid size and
codebook size are not typed here: they come from the autoencoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..autoencoder.model import autoencoder_geometry
from ..data.summary import DataSummary, check_fits, describe_data
from ..latents.cache import CacheConfig
from ..latents.setup import LatentDataConfig
from ..plumbing.autosize import AutoChoice, batch_for, is_gpu, passes_to_steps, schedule_for
from ..plumbing.config import load_config
from ..plumbing.trainkit import EMATrainLoopConfig

from .kinds import KINDS  # noqa: F401  (re-exported: the trainer and the tests read it here)


@dataclass
class PriorModelConfig:
    """The transformer: ``kind`` masked (bidirectional, MaskGIT) or autoregressive (causal, raster order)."""

    kind: Literal["masked", "autoregressive"] | None = None  # set by `train-prior --kind`
    width: int = 192
    layers: int = 4
    heads: int = 6
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    class_conditional: bool = True  # needs labels; adds a null class for classifier-free guidance

    def __post_init__(self):
        if self.width < 8 or self.layers < 1 or self.heads < 1:
            raise ValueError("model.width must be >= 8 and model.layers, model.heads >= 1")
        if self.width % self.heads:
            raise ValueError(f"model.width ({self.width}) must be divisible by model.heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class PriorObjectiveConfig:
    # classifier-free guidance (Ho & Salimans 2022): the label is dropped to the null class with probability p
    label_dropout: float = 0.1
    mask_schedule: Literal["cosine", "linear"] = "cosine"  # masked prior: share of codes masked in training and sampling

    def __post_init__(self):
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"objective.label_dropout must be in [0, 1), got {self.label_dropout}")


@dataclass
class PriorSamplingConfig:
    """Defaults written into the exported folder's vqldm.json (``vqldm generate`` uses them)."""

    steps: int = 8  # masked prior: parallel decoding rounds (the autoregressive prior takes one per code)
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    guidance: float = 2.0
    choice_temperature: float = 4.5  # masked prior: MaskGIT's annealed randomness in which codes are kept

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"sampling.steps must be >= 1, got {self.steps}")
        if not self.temperature > 0:
            raise ValueError(f"sampling.temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"sampling.top_k must be >= 1 or null, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1] or null, got {self.top_p}")


@dataclass
class PriorTrainConfig(EMATrainLoopConfig):
    lr: float = 3e-4
    adam_betas: list[float] = (0.9, 0.95)
    weight_decay: float = 0.01
    num_sample_images: int = 20


@dataclass
class PriorRunConfig:
    data: LatentDataConfig = field(default_factory=LatentDataConfig)
    model: PriorModelConfig = field(default_factory=PriorModelConfig)
    objective: PriorObjectiveConfig = field(default_factory=PriorObjectiveConfig)
    sampling: PriorSamplingConfig = field(default_factory=PriorSamplingConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    train: PriorTrainConfig = field(default_factory=PriorTrainConfig)


def load_prior_config(path, overrides=()) -> PriorRunConfig:
    """A YAML path or preset name from ``configs/prior/``, with ``--set`` overrides applied."""
    return load_config(PriorRunConfig, path, overrides, stage="prior")


def auto_prior_config(autoencoder, data: str | None, labels: str | None, device: str, overrides=(),
                      max_steps: int | None = None) -> tuple[PriorRunConfig, str]:
    """``--config auto``: the prior's run config sized for the data and the autoencoder's code grid on
    ``device`` (``--set`` overrides applied last), and the one line that says what was chosen."""
    geometry = autoencoder_geometry(autoencoder)
    summary = describe_data(data or geometry.source, labels)
    choice = choose_prior(summary, geometry.latent, device)
    cfg = load_config(PriorRunConfig, choice.preset, overrides, stage="prior", sized=choice.overrides)
    m, t = cfg.model, cfg.train
    _, h, w = geometry.latent
    kind = "class-conditional" if m.class_conditional else "unconditional"
    line = (f"auto config: {summary.describe()}, autoencoder {h}x{w} grid of {geometry.codebook_size} codes, {device} -> "
            f"preset {choice.preset!r}, {kind} transformer width {m.width} x {m.layers} layers, batch {t.batch_size}, "
            f"{max_steps or t.max_steps} steps")
    return cfg, line


def choose_prior(summary: DataSummary, latent: tuple[int, int, int], device: str) -> AutoChoice:
    """Preset + overrides of a prior over an autoencoder's codes (one size: the ``small`` transformer)."""
    check_fits(summary)
    n = summary.count
    data = {"source": summary.source}
    if summary.kind in ("folder", "shards"):
        data["labels"] = summary.labels
    batch = batch_for(n, 64)
    # 150 passes; on CPU at most the Fashion-MNIST preset's 3000 steps (~15 minutes on 2 cores)
    train = schedule_for(passes_to_steps(n, batch, 150, 1_000, 3_000 if not is_gpu(device) else 20_000), 200, 500)
    train["batch_size"] = batch
    return AutoChoice("small", {"data": data, "model": {"class_conditional": summary.num_classes > 0}, "train": train})
