"""Write a diffusers pipeline folder from a vqvae, a UNet and a scheduler.

Layout of ``out_dir`` (written atomically: a temporary folder renamed into place)::

    model_index.json   {"_class_name": "LDMPipeline", "vqvae": ["diffusers", "VQModel"],
                        "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "<Scheduler>"]}
    vqvae/             VQModel config + diffusion_pytorch_model.safetensors (scaling_factor explicit)
    unet/              UNet2DModel config + safetensors
    scheduler/         scheduler_config.json (DDIM on the training schedule, from the trainer)
    vqldm.json         class names, null class, image geometry, the latent scale and the sha256 of the
                       vqvae weights the UNet was trained on (checked at load), plus ``extra``

``_class_name`` is ``LDMPipeline`` (component names as in diffusers' LDM pipeline) so that both
``diffusers.DiffusionPipeline.from_pretrained(dir)`` and ``diffusers.LDMPipeline.from_pretrained(dir)``
load the folder with no vqldm code; ``pipelines.VQLatentDiffusionPipeline.from_pretrained(dir)`` loads
the same folder and reads ``vqldm.json`` for class conditioning.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import diffusers

from ..autoencoder.model import downsampling_factor
from ..plumbing.checkpoint import AtomicDir, weights_sha256
from ..plumbing.model_folder import VQLDM_JSON
from .model import check_latent_shape, condition_channels, null_class, unet_latent_shape, unet_num_classes

PIPELINE_CLASS_NAME = "LDMPipeline"
TEXT_PIPELINE_CLASS_NAME = "LDMTextToImagePipeline"  # text models: diffusers' LDM text-to-image layout
SUPERRES_PIPELINE_CLASS_NAME = "LDMSuperResolutionPipeline"  # UNets that also take the low-resolution image
TEXT_ENCODER = "bert"  # that pipeline's name for its text encoder component (any transformers encoder)


def fold_latent_scale(vqvae):
    """A copy of ``vqvae`` whose own latents are its scaled ones (s·h, s = ``scaling_factor``) and whose
    ``scaling_factor`` is 1: ``quant_conv`` and the codebook are multiplied by s, ``post_quant_conv``'s weight
    divided by s. The nearest code of s·h among s·e is the nearest code of h among e, and the decoder sees the
    same input, so images are unchanged (to float rounding). For super-resolution folders, whose pipeline in
    diffusers decodes the UNet's latents with no scaling factor."""
    import copy

    import torch

    s = float(vqvae.config.scaling_factor)
    folded = copy.deepcopy(vqvae)
    if getattr(folded.config, "norm_type", "group") == "spatial":
        raise ValueError("cannot fold the latent scale of a VQModel with spatial norm (its decoder reads the codes)")
    with torch.no_grad():
        folded.quant_conv.weight.mul_(s)
        folded.quant_conv.bias.mul_(s)
        for table in (folded.codebooks() if hasattr(folded, "codebooks") else [folded.quantize.embedding]):
            table.weight.mul_(s)  # every stage of a ResidualVQModel: mean and nearest lookup commute with s
        folded.post_quant_conv.weight.div_(s)
    folded.register_to_config(scaling_factor=1.0)
    return folded


def model_library(model) -> str:
    """The library a model_index.json names for ``model``: ``vqldm`` for vqldm's own classes
    (ResidualVQModel: diffusers then imports vqldm to load it), else ``diffusers``."""
    return "vqldm" if type(model).__module__.split(".")[0] == "vqldm" else "diffusers"


def export_pipeline_folder(vqvae, unet, scheduler, out_dir: str | os.PathLike, extra: dict | None = None,
                           text_encoder=None, tokenizer=None) -> Path:
    """Save ``vqvae`` (VQModel), ``unet`` (UNet2DModel) and ``scheduler`` as a pipeline folder at ``out_dir``.

    ``vqldm.json`` gets, derived from the models unless ``extra`` gives them: ``num_classes`` (from the
    UNet's ``num_class_embeds`` minus the null class; 0 = unconditional), ``null_class`` (= num_classes,
    or None), ``class_names`` (default "0", "1", ...), ``image_size`` (UNet sample_size x the vqvae's
    downsampling factor), ``channels`` (vqvae in_channels), ``autoencoder_scaling_factor``,
    ``vqvae_weights_sha256`` (computed from ``vqvae`` unless given); every other
    key of ``extra`` (JSON-serialisable: training step, config, metrics, ...) is stored as given.
    Raises UserError if the UNet does not take the vqvae's latents. Returns ``Path(out_dir)``.

    A text-to-image model (``text_encoder`` and ``tokenizer``, transformers objects; ``unet`` a
    UNet2DConditionModel) is written with the components of diffusers' ``LDMTextToImagePipeline``: the
    encoder as ``bert/`` (its component name there, whatever the encoder), the tokenizer as ``tokenizer/``;
    ``vqldm.json`` says ``"conditioning": "text"``.
    """
    extra = dict(extra or {})
    _, h, _ = unet_latent_shape(unet.config)
    image_size = int(extra.pop("image_size", h * downsampling_factor(vqvae.config)))
    check_latent_shape(vqvae.config, unet.config, image_size)
    num_classes = int(extra.pop("num_classes", unet_num_classes(unet.config)))
    class_names = [str(c) for c in extra.pop("class_names", None) or [str(i) for i in range(num_classes)]]
    info = {
        "class_names": class_names,
        "num_classes": num_classes,
        "null_class": extra.pop("null_class", null_class(num_classes)),
        "image_size": image_size,
        "channels": int(extra.pop("channels", vqvae.config.in_channels)),
        "autoencoder_scaling_factor": float(vqvae.config.scaling_factor),
        "vqvae_weights_sha256": extra.pop("vqvae_weights_sha256", None) or weights_sha256(vqvae),
        **extra,
    }
    text = text_encoder is not None
    if text != (tokenizer is not None):
        raise ValueError("a text model's pipeline needs both its text_encoder and its tokenizer")
    superres = condition_channels(unet.config) > 0
    if text:
        info["conditioning"] = "text"
    elif superres:
        info["conditioning"] = "image"
    model_index = {
        "_class_name": TEXT_PIPELINE_CLASS_NAME if text else SUPERRES_PIPELINE_CLASS_NAME if superres else PIPELINE_CLASS_NAME,
        "_diffusers_version": diffusers.__version__,
        "vqvae": [model_library(vqvae), type(vqvae).__name__],
        **({TEXT_ENCODER: ["transformers", type(text_encoder).__name__],
            "tokenizer": ["transformers", type(tokenizer).__name__]} if text else {}),
        "unet": ["diffusers", type(unet).__name__],
        "scheduler": ["diffusers", type(scheduler).__name__],
    }
    out_dir = Path(out_dir)
    with AtomicDir(out_dir) as tmp:
        vqvae.save_pretrained(tmp / "vqvae", safe_serialization=True)
        if text:
            from ..text.encoders import quiet_transformers

            with quiet_transformers():
                text_encoder.save_pretrained(tmp / TEXT_ENCODER, safe_serialization=True)
                tokenizer.save_pretrained(tmp / "tokenizer")
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        scheduler.save_pretrained(tmp / "scheduler")
        (tmp / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n", encoding="utf-8")
        (tmp / VQLDM_JSON).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    return out_dir
