"""The stage-2 network: a plain ``diffusers.UNet2DModel`` on the autoencoder's latent grid.

The class-count rule lives here: a class-conditional vqldm UNet has ``num_class_embeds = num_classes + 1``,
the last index being the "null" class of classifier-free guidance (Ho & Salimans 2022). The latent grid
it denoises is the autoencoder's (``vqldm.autoencoder.model.latent_shape``).
"""

from __future__ import annotations

from diffusers import UNet2DModel

from ..autoencoder.model import latent_shape
from ..plumbing.config import config_value
from ..plumbing.errors import UserError
from ..plumbing.images import size_hw
from .config import UNetConfig


def build_unet(cfg: UNetConfig, latent: tuple[int, int, int], num_classes: int = 0) -> UNet2DModel:
    """A UNet2DModel for latents of shape ``latent`` = (C, h, w); class-conditional iff ``num_classes > 0``."""
    c, h, w = latent
    if h != w:
        raise UserError(f"latents are {h}x{w}; vqldm trains square latent grids only")
    if cfg.class_conditional and num_classes < 1:
        raise UserError(
            "model.class_conditional is true but the data has no class labels; pass --labels folders, use a "
            "labelled dataset, or --set model.class_conditional=false"
        )
    if h % cfg.downsampling_factor:
        raise UserError(
            f"latent size {h} is not divisible by the UNet's downsampling factor {cfg.downsampling_factor} "
            f"({len(cfg.block_out_channels)} levels); use fewer model.block_out_channels entries"
        )
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DModel(
        sample_size=h,
        in_channels=c,
        out_channels=c,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        dropout=cfg.dropout,
        add_attention=cfg.mid_block_attention,
        num_class_embeds=num_classes + 1 if cfg.class_conditional else None,
    )


def check_latent_shape(vqvae_config, unet_config, image_size: int | None = None) -> None:
    """Raise a one-line UserError if the UNet does not take the autoencoder's latents.

    Compares channels (``unet in/out_channels`` vs the latents' channels, :func:`latent_shape`) and, when ``image_size``
    is known, the latent size (``unet sample_size`` vs image_size / f). Accepts config objects or dicts.
    """
    get = (lambda cfg, k: cfg.get(k)) if isinstance(unet_config, dict) else getattr
    c = latent_shape(vqvae_config)[0]
    uin, uout, usize = get(unet_config, "in_channels"), get(unet_config, "out_channels"), size_hw(get(unet_config, "sample_size"))
    if uin != c or uout != c:
        raise UserError(
            f"latent shape mismatch: the autoencoder makes {c}-channel latents but the UNet takes {uin} and "
            f"predicts {uout} channels; use the autoencoder the UNet was trained with (or retrain the UNet)"
        )
    if image_size is not None:
        _, h, w = latent_shape(vqvae_config, image_size)
        if usize != (h, w):
            raise UserError(
                f"latent shape mismatch: the autoencoder makes {h}x{w} latents for {image_size}px images but "
                f"the UNet's sample_size is {usize[0]}x{usize[1]}; use the autoencoder the UNet was trained with (or retrain the UNet)"
            )


def unet_latent_shape(unet_config) -> tuple[int, int, int]:
    """(in_channels, h, w) of the latents a UNet denoises."""
    h, w = size_hw(config_value(unet_config, "sample_size"))
    return int(config_value(unet_config, "in_channels")), h, w


def unet_num_classes(unet_config) -> int:
    """Real classes of a vqldm denoiser (``num_class_embeds`` minus the null class); 0 if unconditional."""
    n = config_value(unet_config, "num_class_embeds")
    return int(n) - 1 if n else 0


def null_class(n_classes: int) -> int | None:
    """The label that means "no class" for classifier-free guidance: the index after the real classes."""
    return n_classes if n_classes else None
