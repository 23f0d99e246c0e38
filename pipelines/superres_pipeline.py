"""``VQSuperResolutionPipeline``: a low-resolution image -> a latent UNet that sees it concatenated to its
input -> VQ decoder -> the image at f times the resolution (f: the autoencoder's downsampling factor).

Components and folder layout are diffusers' ``LDMSuperResolutionPipeline``'s (``vqvae``, ``unet`` with
``in_channels`` = latent + image channels, ``scheduler``), and ``model_index.json`` names that class, so a
vqldm super-resolution folder samples in plain diffusers and a ``CompVis/ldm-super-resolution-4x-openimages``
folder samples here, with the same images for the same seed, steps and DDIM scheduler. vqldm adds any
scheduler (the low-resolution image is concatenated after ``scale_model_input``, so schedulers that scale
their input scale only the latents), quantized or plain decoding, numpy / tensor outputs, and the check
that the vqvae is the one the UNet was trained on.
"""

from __future__ import annotations

import operator

import torch
from diffusers import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ..diffusion.model import SuperResolutionDenoiser, condition_channels
from ..diffusion.sampling import denoise
from .inputs import to_image_tensor, to_output
from .pipeline import OUTPUT_TYPES, VQLatentDiffusionPipeline


class VQSuperResolutionPipeline(VQLatentDiffusionPipeline):
    """``pipe(image=low_res, num_inference_steps=50, generator=g).images`` — ``low_res`` is a PIL image (or a
    list), numpy B x H x W x c in [0, 1] or torch B x c x H x W in [-1, 1]; sides divisible by the UNet's
    downsampling factor. The output is f times larger."""

    @property
    def is_superres(self) -> bool:
        return True

    @property
    def upscale_factor(self) -> int:
        return 2 ** (len(self.vqvae.config.block_out_channels) - 1)

    def frozen_unet_applies(self) -> bool:
        return False

    def decode_latents(self, latents: torch.Tensor, quantize: bool = True, decode_batch_size: int | None = None) -> torch.Tensor:
        """Latents -> images in [-1, 1]. A super-resolution UNet works in the vqvae's own latent space, with no
        scaling factor (LDM's VQ models use 1; diffusers' LDMSuperResolutionPipeline decodes the latents as
        they are, whatever the config says; vqldm folds its measured scale into the exported vqvae)."""
        n = decode_batch_size or latents.shape[0]
        chunks = [self.vqvae.decode(part, force_not_quantize=not quantize).sample for part in latents.split(n)]
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    def low_resolution_input(self, image) -> torch.Tensor:
        """The low-resolution input as B x c x H x W in [-1, 1] at its own size (ValueError when its sides do not
        divide by the UNet's downsampling factor)."""
        c = condition_channels(self.unet.config)
        if isinstance(image, torch.Tensor):
            size = tuple(image.shape[-2:])
        else:
            first = image[0] if isinstance(image, (list, tuple)) else image
            size = (first.height, first.width) if isinstance(first, Image.Image) else tuple(first.shape[-3:-1] if getattr(first, "ndim", 0) >= 3 else first.shape)
        factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        if size[0] % factor or size[1] % factor:
            raise ValueError(f"image is {size[1]}x{size[0]}; this super-resolution UNet needs sides divisible by {factor}: "
                             f"crop or resize it")
        return to_image_tensor(image, c, size, "image").to(self.device)

    @torch.inference_mode()
    def __call__(self, image=None, batch_size: int | None = None, num_inference_steps: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, eta: float = 0.0,
                 output_type: str = "pil", quantize: bool = True, latents: torch.Tensor | None = None,
                 decode_batch_size: int | None = None, return_dict: bool = True, class_labels=None,
                 guidance_scale: float | None = None, prompt=None, mask_image=None, strength=None):
        """Upscale ``image`` (required). ``batch_size`` samples per input image (default 1: one each);
        ``quantize`` snaps the latents to the codebook before decoding (diffusers' LDMSuperResolutionPipeline
        decodes through the VQ decoder, which quantizes, so both give the same images)."""
        if image is None:
            raise ValueError("a super-resolution model needs image= (the low-resolution image to upscale)")
        for name, value in (("class_labels", class_labels), ("prompt", prompt), ("mask_image", mask_image), ("strength", strength)):
            if value is not None:
                raise ValueError(f"{name} does not apply to a super-resolution model; it takes image=")
        if guidance_scale not in (None, 1.0):
            raise ValueError("guidance_scale does not apply to a super-resolution model (no guidance)")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(map(repr, OUTPUT_TYPES))}, got {output_type!r}")
        steps = self.resolve_steps(num_inference_steps)
        with self._autocast():
            low = self.low_resolution_input(image)
        repeat = 1 if batch_size is None else operator.index(batch_size)
        if repeat < 1:
            raise ValueError(f"batch_size must be >= 1, got {repeat}")
        if repeat > 1 and low.shape[0] == 1:
            low = low.expand(repeat, -1, -1, -1)
        c = int(self.unet.config.out_channels)
        shape = (low.shape[0], c, *low.shape[-2:])
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        noise = latents.to(self.device) if latents is not None else randn_tensor(shape, generator=generator).to(self.device)
        self.scheduler.set_timesteps(steps)
        with self._autocast():
            x = denoise(SuperResolutionDenoiser(self.unet).given(low), self.scheduler, noise * self.scheduler.init_noise_sigma,
                        self.scheduler.timesteps, generator=generator[0] if isinstance(generator, list) else generator,
                        eta=eta, progress=self.progress_bar)
            images = x if output_type == "latent" else self.decode_latents(x, quantize=quantize, decode_batch_size=decode_batch_size)
        if output_type != "latent":
            images = to_output(images, output_type)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
