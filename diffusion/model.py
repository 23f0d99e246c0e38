"""The stage-2 network: a plain ``diffusers.UNet2DModel`` on the autoencoder's latent grid.

The class-count rule lives here: a class-conditional vqldm UNet has ``num_class_embeds = num_classes + 1``,
the last index being the "null" class of classifier-free guidance (Ho & Salimans 2022). The latent grid
it denoises is the autoencoder's (``vqldm.autoencoder.model.latent_shape``).
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from torch import nn

from ..autoencoder.model import latent_shape
from ..plumbing.config import config_value
from ..plumbing.errors import UserError
from ..plumbing.images import size_hw
from .config import UNetConfig


def _check_grid(cfg: UNetConfig, h: int, w: int) -> None:
    if h != w:
        raise UserError(f"latents are {h}x{w}; vqldm trains square latent grids only")
    if h % cfg.downsampling_factor:
        raise UserError(
            f"latent size {h} is not divisible by the UNet's downsampling factor {cfg.downsampling_factor} "
            f"({len(cfg.block_out_channels)} levels); use fewer model.block_out_channels entries"
        )


def build_unet(cfg: UNetConfig, latent: tuple[int, int, int], num_classes: int = 0, image_channels: int = 0) -> UNet2DModel:
    """A UNet2DModel for latents of shape ``latent`` = (C, h, w); class-conditional iff ``num_classes > 0``;
    ``image_channels`` > 0: a super-resolution UNet that also takes the low-resolution image (c x h x w,
    concatenated to its input, as LDM's super-resolution model)."""
    c, h, w = latent
    if cfg.class_conditional and num_classes < 1:
        raise UserError(
            "model.class_conditional is true but the data has no class labels; pass --labels folders, use a "
            "labelled dataset, or --set model.class_conditional=false"
        )
    _check_grid(cfg, h, w)
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DModel(
        sample_size=h,
        in_channels=c + image_channels,
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


def build_text_unet(cfg: UNetConfig, latent: tuple[int, int, int], cross_attention_dim: int) -> UNet2DConditionModel:
    """A ``UNet2DConditionModel`` for latents ``latent`` = (C, h, w) that cross-attends to text states of width
    ``cross_attention_dim`` in the levels ``cfg.attention`` marks (and its middle block), as LDM's text model.

    ``attention_head_dim`` keeps its UNet2DModel meaning (channels per head): diffusers' conditional UNet
    reads that argument as a head count, so the heads per level are passed as width // head channels.
    """
    c, h, w = latent
    _check_grid(cfg, h, w)
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    heads = tuple(max(1, width // cfg.attention_head_dim) for width in cfg.block_out_channels)
    return UNet2DConditionModel(
        sample_size=h,
        in_channels=c,
        out_channels=c,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn" if cfg.mid_block_attention else None,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=heads,
        norm_num_groups=cfg.norm_num_groups,
        dropout=cfg.dropout,
        cross_attention_dim=cross_attention_dim,
    )


class TextDenoiser(nn.Module):
    """What a text-conditional run trains: the UNet and, for a scratch encoder, the text encoder with it
    (one module, so one optimizer, one EMA and one DDP wrapper cover both). A frozen pretrained encoder stays
    outside (``text_encoder`` None): its states are computed before the call and passed in."""

    def __init__(self, unet: UNet2DConditionModel, text_encoder: nn.Module | None = None):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    @property
    def config(self):
        return self.unet.config

    def forward(self, sample: torch.Tensor, timestep, input_ids: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None):
        if encoder_hidden_states is None:
            if self.text_encoder is None or input_ids is None:
                raise ValueError("TextDenoiser needs input_ids (scratch encoder) or encoder_hidden_states")
            encoder_hidden_states = self.text_encoder(input_ids)[0]
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)


class SuperResolutionDenoiser(nn.Module):
    """What a super-resolution run trains: a UNet2DModel whose input is the noisy latents with the
    low-resolution image (at the latent grid's size) concatenated, as LDM's super-resolution model."""

    def __init__(self, unet: UNet2DModel):
        super().__init__()
        self.unet = unet

    @property
    def config(self):
        return self.unet.config

    def forward(self, sample: torch.Tensor, timestep, low_res: torch.Tensor):
        return self.unet(torch.cat([sample, low_res.to(sample.dtype)], dim=1), timestep)

    def given(self, low_res: torch.Tensor):
        """A UNet-like callable ``(sample, t, class_labels=None) -> .sample`` with ``low_res`` fixed: what the
        denoising loop (``diffusion.sampling.denoise``) calls."""
        return lambda sample, timestep, class_labels=None: self(sample, timestep, low_res=low_res)


def check_latent_shape(vqvae_config, unet_config, image_size: int | None = None) -> None:
    """Raise a one-line UserError if the UNet does not take the autoencoder's latents.

    Compares channels (``unet out_channels`` vs the latents' channels, :func:`latent_shape`; ``in_channels``
    the same, or that plus the image channels for a super-resolution UNet, which also sees the low-resolution
    image) and, when ``image_size`` is known, the latent size (``unet sample_size`` vs image_size / f).
    Accepts config objects or dicts.
    """
    c = latent_shape(vqvae_config)[0]
    image_channels = int(config_value(vqvae_config, "in_channels"))
    uin, uout = config_value(unet_config, "in_channels"), config_value(unet_config, "out_channels")
    usize = size_hw(config_value(unet_config, "sample_size"))
    if uout != c or uin not in (c, c + image_channels):
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
    """(channels, h, w) of the latents a UNet denoises (its ``out_channels``: a super-resolution UNet takes
    the low-resolution image as extra input channels)."""
    h, w = size_hw(config_value(unet_config, "sample_size"))
    return int(config_value(unet_config, "out_channels")), h, w


def condition_channels(unet_config) -> int:
    """Input channels beyond the latents: the low-resolution image of a super-resolution UNet; else 0."""
    return int(config_value(unet_config, "in_channels")) - int(config_value(unet_config, "out_channels"))


def unet_num_classes(unet_config) -> int:
    """Real classes of a vqldm denoiser (``num_class_embeds`` minus the null class); 0 if unconditional."""
    n = config_value(unet_config, "num_class_embeds")
    return int(n) - 1 if n else 0


def null_class(n_classes: int) -> int | None:
    """The label that means "no class" for classifier-free guidance: the index after the real classes."""
    return n_classes if n_classes else None
