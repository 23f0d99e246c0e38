"""Latent geometry: one place for the shapes, class counts and latent scale that every stage needs.

* The VQ autoencoder downsamples by ``f = 2^(len(block_out_channels) - 1)`` (each encoder block but the
  last halves the size), so ``image_size`` pixels give an ``image_size / f`` latent grid with
  ``latent_channels`` channels.
* diffusers stores ``sample_size`` as an int or as ``[h, w]``; :func:`size_hw` reads both.
* A class-conditional vqldm UNet has ``num_class_embeds = num_classes + 1``: the last index is the
  "null" class of classifier-free guidance (Ho & Salimans 2022).
* The denoiser works on ``h * scaling_factor`` (LDM convention: unit variance); :func:`scale_latents`
  and :func:`unscale_latents` are the only places that multiply or divide by it.

Functions take a diffusers model, its config object, or a plain dict.
"""

from __future__ import annotations

import torch

from .errors import UserError


def _get(config, key: str, default=None):
    if not isinstance(config, dict) and hasattr(config, "config"):  # a model: read its config
        config = config.config
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def size_hw(size) -> tuple[int, int]:
    """``sample_size`` as (height, width): an int means a square."""
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[-1])
    return int(size), int(size)


def downsampling_factor(num_blocks_or_config) -> int:
    """f of an autoencoder (its config, or its number of encoder blocks): each block but the last halves the size."""
    if isinstance(num_blocks_or_config, int):
        n = num_blocks_or_config
    else:
        n = len(_get(num_blocks_or_config, "block_out_channels"))
    return 2 ** (n - 1)


def latent_shape(vqvae_config, image_size=None) -> tuple[int, int, int]:
    """(channels, h, w) of the pre-quantization latents for images of ``image_size`` (int or (h, w);
    default: the autoencoder's own ``sample_size``). A size not divisible by f is a UserError. The channels
    are the codebook vectors' size: ``quant_conv`` maps the encoder's ``latent_channels`` to
    ``vq_embed_dim`` when that is set."""
    f = downsampling_factor(vqvae_config)
    h, w = size_hw(_get(vqvae_config, "sample_size") if image_size is None else image_size)
    if h % f or w % f:
        raise UserError(f"image size {h}x{w} is not divisible by the autoencoder's downsampling factor {f}; use a multiple of {f}")
    return int(_get(vqvae_config, "vq_embed_dim") or _get(vqvae_config, "latent_channels")), h // f, w // f


def unet_latent_shape(unet_config) -> tuple[int, int, int]:
    """(in_channels, h, w) of the latents a UNet denoises."""
    h, w = size_hw(_get(unet_config, "sample_size"))
    return int(_get(unet_config, "in_channels")), h, w


def num_classes(unet_config) -> int:
    """Real classes of a vqldm denoiser (``num_class_embeds`` minus the null class); 0 if unconditional."""
    n = _get(unet_config, "num_class_embeds")
    return int(n) - 1 if n else 0


def null_class(n_classes: int) -> int | None:
    """The label that means "no class" for classifier-free guidance: the index after the real classes."""
    return n_classes if n_classes else None


def scale_latents(h: torch.Tensor, vqvae) -> torch.Tensor:
    """Pre-quantization latents -> the denoiser's space: ``h * scaling_factor``."""
    return h * float(vqvae.config.scaling_factor)


def unscale_latents(z: torch.Tensor, vqvae) -> torch.Tensor:
    """The denoiser's space -> pre-quantization latents: ``z / scaling_factor``."""
    return z / float(vqvae.config.scaling_factor)
