"""The stage-1 model: a plain ``diffusers.VQModel`` built from a typed config, plus the training wrapper."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import VQModel
from torch import nn

from .errors import UserError
from .quantizer import QuantizerConfig, QuantizerOutput, VectorQuantizerEMA


@dataclass
class AutoencoderModelConfig:
    """Architecture of the VQ autoencoder; image size and channels come from the data section."""

    block_out_channels: list[int] = field(default_factory=lambda: [64, 128, 128])  # f = 2^(len-1)
    layers_per_block: int = 1
    latent_channels: int = 4
    vq_embed_dim: int | None = None  # codebook vector size; defaults to latent_channels
    codebook_size: int = 256
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True

    def __post_init__(self):
        if not self.block_out_channels:
            raise ValueError("model.block_out_channels must list at least one width")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"model.block_out_channels {bad} must be divisible by model.norm_num_groups={self.norm_num_groups}")
        if self.codebook_size < 2:
            raise ValueError(f"model.codebook_size must be >= 2, got {self.codebook_size}")

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


def build_vqmodel(cfg: AutoencoderModelConfig, image_size: int, channels: int) -> VQModel:
    f = cfg.downsampling_factor
    if image_size % f:
        raise UserError(
            f"image size {image_size} is not divisible by the downsampling factor {f} "
            f"({len(cfg.block_out_channels)} blocks); set data.image_size to a multiple of {f}"
        )
    n = len(cfg.block_out_channels)
    return VQModel(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        sample_size=image_size,
        num_vq_embeddings=cfg.codebook_size,
        norm_num_groups=cfg.norm_num_groups,
        vq_embed_dim=cfg.vq_embed_dim,
        scaling_factor=1.0,  # measured after training and written explicitly (never the KL default 0.18215)
        mid_block_add_attention=cfg.mid_block_add_attention,
    )


def vq_decode(vqmodel: VQModel, z_q: torch.Tensor) -> torch.Tensor:
    """Decode already-quantized latents exactly as ``VQModel.decode(..., force_not_quantize=True)``."""
    quant2 = vqmodel.post_quant_conv(z_q)
    return vqmodel.decoder(quant2, z_q if vqmodel.config.norm_type == "spatial" else None)


class VQAutoencoder(nn.Module):
    """Training wrapper: VQModel encoder/decoder + the EMA quantizer sharing its codebook.

    ``forward(x)`` returns (reconstruction, QuantizerOutput, pre-quantization latents h); one module, so
    DDP sees one forward per step.
    """

    def __init__(self, vqmodel: VQModel, qcfg: QuantizerConfig, seed: int = 0):
        super().__init__()
        self.vqmodel = vqmodel
        self.quantizer = VectorQuantizerEMA(vqmodel.quantize.embedding, qcfg, seed=seed)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vqmodel.quant_conv(self.vqmodel.encoder(x))  # B x D x h x w

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput, torch.Tensor]:
        h = self.encode(x)
        q = self.quantizer(h)
        rec = vq_decode(self.vqmodel, q.z_q.to(h.dtype))
        return rec, q, h

    def last_layer(self) -> torch.Tensor:
        return self.vqmodel.decoder.conv_out.weight
