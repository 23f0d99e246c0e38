"""The denoising loop, independent of any pipeline class: model + scheduler + latents -> latents.

Classifier-free guidance (Ho & Salimans 2022): eps = eps_uncond + s * (eps_cond - eps_uncond), with the
conditional and unconditional halves in one batched UNet call; at s = 1 the unconditional half is skipped
(it would cancel exactly). The "unconditional" label is the extra null class (index = num_classes).
"""

from __future__ import annotations

import inspect
from typing import Callable, Iterable

import torch
from diffusers import VQModel

from ..autoencoder.model import unscale_latents
from .model import null_class


def guided_prediction(
    unet,
    latents: torch.Tensor,
    t: torch.Tensor | int,
    class_labels: torch.Tensor | None,
    guidance_scale: float,
    null_class: int | None,
    context: torch.Tensor | None = None,
    null_context: torch.Tensor | None = None,
) -> torch.Tensor:
    """The model output at (latents, t), with classifier-free guidance when ``guidance_scale != 1``.

    Class models take ``class_labels`` (null: the class ``null_class``); text models take ``context``, the
    prompt's encoder states B x L x D (null: ``null_context``, the empty prompt's).
    """
    if context is not None:
        if guidance_scale == 1.0:
            return unet(latents, t, encoder_hidden_states=context).sample
        if null_context is None:
            raise ValueError("guidance needs the null (empty prompt) context")
        out = unet(torch.cat([latents, latents]), t, encoder_hidden_states=torch.cat([context, null_context.expand_as(context)])).sample
    else:
        if class_labels is None or guidance_scale == 1.0:
            return unet(latents, t, class_labels=class_labels).sample
        if null_class is None:
            raise ValueError("guidance needs a class-conditional model with a null class")
        null = torch.full_like(class_labels, null_class)
        out = unet(torch.cat([latents, latents]), t, class_labels=torch.cat([class_labels, null])).sample
    cond, uncond = out.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def denoise(
    unet,
    scheduler,
    latents: torch.Tensor,
    timesteps: Iterable,
    class_labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    null_class: int | None = None,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    after_step: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    context: torch.Tensor | None = None,
    null_context: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``scheduler.step`` over ``timesteps`` (already set on the scheduler) and return the latents.

    ``after_step(i, t, latents) -> latents`` lets callers modify latents after each step (inpainting
    re-imposes the known region there). ``progress`` wraps the timestep iterable (e.g. a tqdm bar).
    ``context`` / ``null_context``: a text model's prompt states and the empty prompt's (see guided_prediction).
    """
    params = set(inspect.signature(scheduler.step).parameters)
    step_kwargs = {}
    if "eta" in params:
        step_kwargs["eta"] = eta
    if "generator" in params and generator is not None:
        step_kwargs["generator"] = generator
    steps = list(timesteps)
    for i, t in enumerate(progress(steps) if progress else steps):
        model_input = scheduler.scale_model_input(latents, t)
        prediction = guided_prediction(unet, model_input, t, class_labels, guidance_scale, null_class, context, null_context)
        # under fp16/bf16 autocast the UNet returns half precision; the scheduler math stays in the latents' dtype
        prediction = prediction.to(latents.dtype)
        latents = scheduler.step(prediction, t, latents, **step_kwargs).prev_sample
        if after_step is not None:
            latents = after_step(i, t, latents)
    return latents


@torch.no_grad()
def generate_samples(
    unet,
    vqvae: VQModel,
    scheduler,
    num_images: int,
    num_classes: int,
    guidance_scale: float,
    steps: int,
    seed: int,
    device: torch.device,
    context: torch.Tensor | None = None,
    null_context: torch.Tensor | None = None,
    low_res: torch.Tensor | None = None,
) -> torch.Tensor:
    """Images in [-1, 1] (B x C x H x W, float32 on CPU) sampled with DDIM and decoded (quantized) by the vqvae.
    ``low_res``: a super-resolution denoiser's low-resolution inputs (B x c x h x w).

    Class-conditional models cycle through the classes (image i has class i mod num_classes); text models
    take one prompt's states per image (``context``, B x L x D) and the empty prompt's (``null_context``).
    """
    cfg = unet.config
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn((num_images, cfg.out_channels, cfg.sample_size, cfg.sample_size), generator=g).to(device)
    latents = latents * scheduler.init_noise_sigma
    labels = torch.arange(num_images, device=device) % num_classes if num_classes else None
    guided = num_classes or context is not None
    if low_res is not None:  # a SuperResolutionDenoiser
        unet = unet.given(low_res)
    scheduler.set_timesteps(steps, device=device)
    latents = denoise(unet, scheduler, latents, scheduler.timesteps, class_labels=labels,
                      guidance_scale=guidance_scale if guided else 1.0, null_class=null_class(num_classes),
                      context=context, null_context=null_context)
    images = vqvae.decode(unscale_latents(latents, vqvae)).sample
    return images.float().cpu().clamp(-1, 1)
