"""Tiny random-weight pipelines for the stage-3 tests (built in seconds, no training)."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, UNet2DModel, VQModel

from vqldm.pipelines.pipeline import VQLatentDiffusionPipeline


def tiny_vqvae(image_size: int = 16, channels: int = 3, latent_channels: int = 3, scaling_factor: float | None = 0.8,
               seed: int = 0) -> VQModel:
    torch.manual_seed(seed)
    kwargs = {} if scaling_factor is None else {"scaling_factor": scaling_factor}
    return VQModel(
        in_channels=channels, out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=latent_channels, sample_size=image_size,
        num_vq_embeddings=32, norm_num_groups=4, **kwargs,
    ).eval()


def tiny_unet(latent_size: int = 8, latent_channels: int = 3, num_classes: int = 0, seed: int = 1) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=4, attention_head_dim=8,
        num_class_embeds=num_classes + 1 if num_classes else None,
    ).eval()


def ldm_scheduler(**overrides) -> DDIMScheduler:
    """The CompVis LDM training schedule (linear betas 0.0015 -> 0.0195, 1000 steps)."""
    cfg = dict(beta_start=0.0015, beta_end=0.0195, beta_schedule="linear", num_train_timesteps=1000, clip_sample=False,
               set_alpha_to_one=False)
    cfg.update(overrides)
    return DDIMScheduler(**cfg)


def tiny_pipeline(num_classes: int = 0, scaling_factor: float | None = 0.8, channels: int = 3) -> VQLatentDiffusionPipeline:
    pipe = VQLatentDiffusionPipeline(tiny_vqvae(channels=channels, scaling_factor=scaling_factor),
                                     tiny_unet(num_classes=num_classes), ldm_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe
