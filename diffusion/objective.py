"""The training objective as pure functions: noise schedule, targets, min-SNR weights, the loss.

Notation (Ho et al. 2020; Salimans & Ho 2022): ᾱ_t = ``scheduler.alphas_cumprod[t]``, α_t = √ᾱ_t,
σ_t = √(1-ᾱ_t); the noisy latent is z_t = α_t·x0 + σ_t·ε and SNR(t) = α_t²/σ_t² = ᾱ_t/(1-ᾱ_t).
The schedule itself (betas -> ᾱ) comes from diffusers' ``DDPMScheduler``; nothing here re-derives it,
and nothing imports a network class: ``model_output`` is any tensor of the latents' shape.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ..plumbing.trainkit import to_device
from .config import ObjectiveConfig


def schedule_kwargs(cfg: ObjectiveConfig) -> dict:
    """The training schedule in diffusers' scheduler arguments (one definition for every scheduler built
    from it); ``clip_sample=False``: latents are not bounded to [-1, 1]."""
    return dict(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                beta_schedule=cfg.beta_schedule, prediction_type=cfg.prediction_type, clip_sample=False)


def make_train_scheduler(cfg: ObjectiveConfig) -> DDPMScheduler:
    """The forward process used in training (``add_noise``, ``get_velocity``, ``alphas_cumprod``)."""
    return DDPMScheduler(**schedule_kwargs(cfg))


def make_sampling_scheduler(cfg: ObjectiveConfig) -> DDIMScheduler:
    """The default sampler saved in the pipeline folder: DDIM on the training schedule.

    ``clip_sample=False`` (latents are unbounded), ``set_alpha_to_one=False`` and ``steps_offset=1``
    as in the diffusers configs of LDM / Stable Diffusion (the last step uses ᾱ_0, not 1).
    """
    return DDIMScheduler(**schedule_kwargs(cfg), set_alpha_to_one=False, steps_offset=1)


def training_target(
    prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, scheduler: DDPMScheduler
) -> torch.Tensor:
    """What the model must output for z_t = α_t·x0 + σ_t·ε (all tensors B x C x h x w, ``timesteps`` B).

    * ``epsilon``: ε (Ho et al. 2020);
    * ``v_prediction``: v = α_t·ε − σ_t·x0 (Salimans & Ho 2022), via ``scheduler.get_velocity``;
    * ``sample``: x0.
    """
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    if prediction_type == "sample":
        return x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}; use epsilon, v_prediction or sample")


def snr(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 − ᾱ_t) for each timestep (float32, B)."""
    alphas_cumprod = scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float64)[timesteps]
    return (alphas_cumprod / (1.0 - alphas_cumprod)).float()


def min_snr_weights(
    scheduler: DDPMScheduler, timesteps: torch.Tensor, prediction_type: str, gamma: float | None
) -> torch.Tensor | None:
    """Min-SNR-γ loss weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting").

    The x0-space weight is min(SNR, γ); expressed for the other parameterisations (their MSE equals the
    x0 MSE times SNR for ε, times SNR + 1 for v):
    ``epsilon``: min(SNR, γ)/SNR, ``v_prediction``: min(SNR, γ)/(SNR + 1), ``sample``: min(SNR, γ).
    Returns B weights, or None when ``gamma`` is None (uniform weighting).
    """
    if gamma is None:
        return None
    s = snr(scheduler, timesteps)
    clipped = torch.clamp(s, max=gamma)
    if prediction_type == "epsilon":
        return clipped / s.clamp_min(1e-12)
    if prediction_type == "v_prediction":
        return clipped / (s + 1.0)
    if prediction_type == "sample":
        return clipped
    raise ValueError(f"unknown prediction_type {prediction_type!r}; use epsilon, v_prediction or sample")


def diffusion_loss(model_output: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per sample (mean over C, h, w), weighted per sample, averaged over the batch."""
    per_sample = (model_output.float() - target.float()).pow(2).flatten(1).mean(1)  # B
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    return per_sample.mean()


def sample_noise_and_timesteps(
    x0: torch.Tensor, num_train_timesteps: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """ε ~ N(0, I) of x0's shape and t ~ U{0, ..., T-1} per sample, drawn on CPU from ``generator``
    (so a run is reproducible on any device) and moved to x0's device."""
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
    timesteps = torch.randint(0, num_train_timesteps, (x0.shape[0],), generator=generator)
    return to_device(noise, x0.device).to(x0.dtype), to_device(timesteps, x0.device)
