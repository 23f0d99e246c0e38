"""The setup both latent-stage trainers share (latent diffusion and the priors over codes).

Before its loop, a stage-2 trainer opens the autoencoder, reads the images with the autoencoder's
geometry, builds its model, creates the run folder, encodes the images once into a cache (latents or
code indices), and draws batches from the cache: :func:`prepare_latent_stage` does all of that in the
same order for both, checking every input before anything is written. The loops stay in each stage's
``train.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from diffusers import VQModel
from torch import nn

from ..autoencoder.model import latent_shape, load_vqvae
from ..data.config import DataConfig
from ..data.loading import BatchSampler
from ..data.sources import load_datasets
from ..data.splits import Datasets, ImageSplit
from ..plumbing.config import save_config
from ..plumbing.errors import UserError
from ..plumbing.images import size_hw
from ..plumbing.init_weights import init_folder, load_init_model, read_model_config
from ..plumbing.runs import console, prepare_run_dir
from ..plumbing.trainkit import check_max_steps, make_accelerator
from .cache import cache_root, prepare_code_cache, prepare_latent_cache


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
    fit: Literal["pad", "resize", "crop"] | None = None  # validated by DataConfig.__post_init__, which allows None


def resolve_latent_data(cfg: LatentDataConfig, ae_data: dict | None, vqvae_config) -> DataConfig:
    """The data section with image_size / channels / fit taken from the autoencoder.

    Source of truth: the autoencoder run's ``config.yaml`` data section (``ae_data``), else the vqvae
    config (``sample_size``, ``in_channels``). A value set in ``cfg`` that disagrees is a UserError.
    """
    if cfg.streaming:  # the cache is laid out by row count and keyed by content, which a stream does not know up front
        raise UserError("stage 2 encodes its images once into a latent cache, which needs the dataset downloaded; "
                        "drop data.streaming (--set data.streaming=false) or save a subset with save_to_disk and pass hf:FOLDER")
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
        captions=cfg.captions,
        caption_column=cfg.caption_column,
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


@dataclass
class LatentStage:
    """A latent-stage run once it is set up: everything its training loop reads besides the model."""

    accelerator: Any
    log: Callable[[str], None]  # console lines on the main process, silent elsewhere
    progress: bool  # progress bars (main process, train.progress)
    vqvae: VQModel  # on the training device, frozen
    run_dir: Path
    data: DataConfig  # the images' source and geometry, as used
    latent: tuple[int, int, int]  # (C, h, w) of the latent grid
    num_classes: int  # 0: unconditional
    class_names: list[str]
    cache: Any  # LatentCache (latents) or CodeCache (code indices)
    sampler: BatchSampler

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


def init_unet_folder(init: str, cfg, what: str = "--init") -> tuple[Path, dict]:
    """(folder, config) of the published UNet2DModel named by ``init`` (a UNet, pipeline or run folder, or a
    Hub repo id; ``plumbing.init_weights``), checked before any data is read: a plain latent UNet, for a run
    that is neither text- nor image-conditioned."""
    if getattr(getattr(cfg, "text", None), "enabled", False):
        raise UserError(f"{what} starts an unconditional, class-conditional or super-resolution UNet; text-conditional "
                        f"runs cannot start from published weights yet")
    folder = init_folder(init, "unet", what)
    return folder, read_model_config(folder, ("UNet2DModel",), what)


def init_unet(folder: Path, config: dict, latent: tuple[int, int, int], image_size: int, train: "ImageSplit",
              log: Callable[[str], None], what: str = "--init", image_channels: int = 0) -> tuple[nn.Module, int]:
    """(the published UNet with its weights, the number of classes it is trained on) once its shapes are
    checked against the autoencoder's latents and the data's classes. Its conditioning is the init's: a
    class-conditional UNet has ``num_class_embeds`` = classes + 1 (the null class of guidance,
    ``diffusion.model``) and needs exactly that many classes in the data."""
    from diffusers import UNet2DModel

    c, h, w = latent
    size = size_hw(config.get("sample_size"))
    extra = int(image_channels or 0)  # a super-resolution UNet also takes the low-resolution image
    if (config.get("in_channels"), config.get("out_channels"), size) != (c + extra, c, (h, w)):
        takes = f" + {extra} image channels" if extra else ""
        raise UserError(f"{what} {str(folder)!r} denoises {config.get('in_channels')}x{size[0]}x{size[1]} latents but the "
                        f"autoencoder makes {c}x{h}x{w} latents{takes} of {image_size} px images; pass a UNet trained on this "
                        f"autoencoder's latents (or the --autoencoder it was trained on)")
    embeds = config.get("num_class_embeds")
    labelled = train.num_classes > 0 and not bool((train.labels < 0).any())
    data_classes = train.num_classes if labelled else 0
    if embeds and int(embeds) - 1 != data_classes:
        raise UserError(f"{what} {str(folder)!r} is class-conditional on {int(embeds) - 1} classes (num_class_embeds "
                        f"{embeds}, one for guidance's null class) but the data has {data_classes or 'no'} classes; "
                        f"pass images with {int(embeds) - 1} classes (--labels folders) or an unconditional UNet")
    num_classes = int(embeds) - 1 if embeds else 0
    unet = load_init_model(UNet2DModel, folder, what)
    n = sum(p.numel() for p in unet.parameters())
    unused = "; the data's class labels are not used" if data_classes and not num_classes else ""
    log(f"init: UNet2DModel {str(folder)!r} ({n / 1e6:.2f}M parameters, {c}x{h}x{w} latents, "
        f"{f'{num_classes} classes' if num_classes else 'unconditional'}): the model is the init's, the preset's "
        f"model.* keys are ignored{unused}")
    return unet, num_classes


def prepare_latent_stage(cfg, out: str | os.PathLike, autoencoder: str | os.PathLike, data: str | None,
                         max_steps: int | None, resume: bool, *, codes: bool,
                         build_model: Callable[[VQModel, tuple[int, int, int], int], nn.Module],
                         init: str | None = None) -> tuple[LatentStage, nn.Module]:
    """Set up a stage-2 run (``cfg``: a run config with ``data``, ``model``, ``cache``, ``train``): open the
    autoencoder, read the images with its geometry, build the model with ``build_model(vqvae, latent,
    num_classes)`` (seeded; it rejects impossible shapes) -- or, with ``init``, load the published UNet it
    names (:func:`init_unet`; its conditioning replaces ``model.class_conditional``) -- then -- every input
    checked, nothing written before -- create the run folder with its config.yaml, encode the images once
    into the cache (``codes``: code indices, else scaled latents) and lay out the batch order."""
    if init is not None and codes:
        raise ValueError("init starts a latent UNet; a prior over codes cannot start from one")
    check_max_steps(max_steps, cfg.train.grad_accumulation)
    if max_steps is not None:
        cfg.train.max_steps = max_steps
    tc = cfg.train
    acc = make_accelerator(tc)
    is_main = acc.is_main_process
    log = console if is_main else (lambda msg: None)
    progress = is_main and tc.progress
    prepare_run_dir(out, resume, is_main, create=False)  # a failed start leaves no (half-)run folder behind
    ae = load_vqvae(autoencoder)
    vqvae = ae.vqvae
    init_dir, init_config = init_unet_folder(init, cfg) if init is not None else (None, None)
    datasets, data_cfg = load_latent_stage_data(cfg.data, ae.data, vqvae.config, data, log=log, progress=progress, accelerator=acc)
    latent = latent_shape(vqvae.config, data_cfg.image_size)
    torch.manual_seed(tc.seed)
    if init is None:
        num_classes = conditioning_classes(datasets.train, cfg.model.class_conditional)
        model = build_model(vqvae, latent, num_classes)
    else:
        image_channels = int(vqvae.config.in_channels) if getattr(cfg.model, "superresolution", False) else 0
        model, num_classes = init_unet(init_dir, init_config, latent, data_cfg.image_size, datasets.train, log,
                                       image_channels=image_channels)
        cfg.model.class_conditional = num_classes > 0  # config.yaml says what is trained
    class_names = list(datasets.train.class_names) if num_classes else []
    run_dir = prepare_run_dir(out, resume, is_main)
    acc.wait_for_everyone()
    if is_main:
        save_config(cfg, run_dir / "config.yaml")
    vqvae.to(acc.device)
    prepare_cache = prepare_code_cache if codes else prepare_latent_cache
    cache = prepare_cache(cache_root(cfg.cache.folder, ae.run_dir, run_dir), vqvae, datasets, cfg.cache, data_cfg.image_size,
                          data_cfg.channels, data_cfg.fit, accelerator=acc, log=log, progress=progress,
                          num_workers=data_cfg.num_workers)
    # from here on training reads the cache only; the images (``datasets``) are dropped with this frame
    sampler = BatchSampler(len(cache.train), tc.batch_size, tc.seed, acc.process_index, acc.num_processes)
    stage = LatentStage(acc, log, progress, vqvae, run_dir, data_cfg, latent, num_classes, class_names, cache, sampler)
    return stage, model
