"""The setup both latent-stage trainers share (latent diffusion and the priors over codes).

Before its loop, a stage-2 trainer opens the autoencoder, reads the images with the autoencoder's
geometry, builds its model, creates the run folder, encodes the images once into a cache (latents or
code indices), and draws batches from the cache: :func:`prepare_latent_stage` does all of that in the
same order for both, checking every input before anything is written. The loops stay in each stage's
``train.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from ..data.config import DataConfig
from ..data.sources import load_datasets
from ..data.splits import Datasets, ImageSplit
from ..plumbing.errors import UserError
from ..plumbing.images import size_hw


@dataclass
class LatentDataConfig(DataConfig):
    """The data section of a stage that trains on an autoencoder's latents (diffusion, priors): a
    :class:`DataConfig` whose image geometry defaults to the autoencoder's.

    ``image_size``, ``channels`` and ``fit`` are ``None`` (= take them from the autoencoder run's
    ``config.yaml``, or from the ``vqvae`` config for a bare VQModel folder). Setting one that disagrees
    with the autoencoder is an error: the latents only mean something for the images the autoencoder saw.
    """

    image_size: int | None = None
    channels: int | None = None
    fit: Literal["pad", "resize", "crop"] | None = None

    def __post_init__(self):
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"data.image_size must be >= 8, got {self.image_size}")
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {self.channels}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"data.holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0 (or null for automatic), got {self.num_workers}")


def resolve_latent_data(cfg: LatentDataConfig, ae_data: dict | None, vqvae_config) -> DataConfig:
    """The data section with image_size / channels / fit taken from the autoencoder.

    Source of truth: the autoencoder run's ``config.yaml`` data section (``ae_data``), else the vqvae
    config (``sample_size``, ``in_channels``). A value set in ``cfg`` that disagrees is a UserError.
    """
    if ae_data:
        theirs = {k: ae_data.get(k) for k in ("image_size", "channels", "fit")}
    else:
        theirs = {"image_size": size_hw(vqvae_config.sample_size)[0], "channels": vqvae_config.in_channels, "fit": None}
    values = {}
    for key, theirs_value in theirs.items():
        mine = getattr(cfg, key)
        if mine is not None and theirs_value is not None and mine != theirs_value:
            raise UserError(
                f"data.{key} is {mine!r} but the autoencoder was trained with {theirs_value!r}; remove data.{key} "
                f"from the config (it is taken from the autoencoder)"
            )
        values[key] = mine if mine is not None else theirs_value
    if values["image_size"] is None or values["channels"] is None:
        raise UserError("cannot tell the autoencoder's image size or channels; set data.image_size and data.channels")
    return DataConfig(
        source=cfg.source,
        image_size=int(values["image_size"]),
        channels=int(values["channels"]),
        fit=values["fit"] or "pad",
        labels=cfg.labels,
        holdout_fraction=cfg.holdout_fraction,
        max_images=cfg.max_images,
        num_workers=cfg.num_workers,
        random_crop=cfg.random_crop,
        random_flip=cfg.random_flip,
        hf_config=cfg.hf_config,
    )


def load_latent_stage_data(cfg: LatentDataConfig, ae_data: dict | None, vqvae_config, data: str | None,
                           log: Callable[[str], None] = print, progress: bool = True, accelerator=None) -> tuple["Datasets", DataConfig]:
    """The images a stage trained on an autoencoder's latents reads: geometry from the autoencoder, source
    from ``--data``, the config, or the autoencoder run's; ``cfg`` is filled in with what was used (so the
    run's config.yaml says it)."""
    data_cfg = resolve_latent_data(cfg, ae_data, vqvae_config)
    datasets = load_datasets(data or cfg.source or (ae_data or {}).get("source"), data_cfg, log=log, progress=progress,
                             accelerator=accelerator)
    cfg.source, cfg.image_size, cfg.channels, cfg.fit = datasets.source, data_cfg.image_size, data_cfg.channels, data_cfg.fit
    return datasets, data_cfg


def conditioning_classes(train: "ImageSplit", class_conditional: bool) -> int:
    """The number of classes a class-conditional model is trained on (0 when unconditional); a UserError
    when a class-conditional model is asked for on unlabelled images."""
    if not class_conditional:
        return 0
    if train.num_classes == 0 or bool((train.labels < 0).any()):
        raise UserError(
            "model.class_conditional is true but the training images have no class labels; pass --labels folders "
            "(one subfolder per class), use a labelled dataset, or --set model.class_conditional=false"
        )
    return train.num_classes
