"""Samplers for the latent denoiser: any of diffusers' schedulers, built from the training schedule.

``make_scheduler("unipc", pipe_schedule_config, timestep_spacing="trailing")`` keeps the betas and the
prediction type the UNet was trained with and changes only how the reverse process is discretised.
"""

from __future__ import annotations

import inspect

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

# name -> (scheduler class, extra config); "dpm" is DPM-Solver++ (Lu et al. 2022), 2nd order multistep;
# "unipc" is UniPC (Zhao et al. 2023), 2nd order multistep with the B(h) = e^h - 1 variant.
SCHEDULERS: dict[str, tuple[type, dict]] = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "dpm": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler": (EulerDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {"solver_type": "bh2", "solver_order": 2}),
}
# Sampler settings a latent model needs whatever the source config says by omission: never clip the
# latents to [-1, 1] (they are scaled to unit variance, not bounded), and LDM's last alpha (not 1).
# Without this, converting a DPM-Solver config (which has no clip_sample key) to DDIM switched clipping on.
SAMPLER_DEFAULTS = {"clip_sample": False, "set_alpha_to_one": False}


def scheduler_kind(scheduler) -> str | None:
    """The :data:`SCHEDULERS` name of ``scheduler``'s class ("dpm" for DPMSolverMultistepScheduler); None for a
    class vqldm does not build (a published folder's PNDM, say)."""
    return next((name for name, (cls, _) in SCHEDULERS.items() if type(scheduler) is cls), None)


def make_scheduler(name: str, base_config, **options):
    """A scheduler of kind ``name`` carrying the training schedule (betas, prediction type) of ``base_config``.

    ``options`` set sampler settings such as ``timestep_spacing="trailing"`` (keys the class does not
    take are an error). ValueError for an unknown ``name``, option or option value (diffusers checks some
    values only when the timesteps are set, so a trial ``set_timesteps`` runs here)."""
    key = str(name).lower()
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls, extra = SCHEDULERS[key]
    accepted = set(inspect.signature(cls.__init__).parameters)
    base = dict(base_config)
    # keep only keys the target understands (a DDIM config has clip_sample etc. that DPM/Euler would warn about)
    config = {k: v for k, v in base.items() if k in accepted}
    config.update({k: v for k, v in SAMPLER_DEFAULTS.items() if k in accepted and k not in base})
    config.update(extra)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"scheduler {key!r} has no option {', '.join(map(repr, unknown))}")
    config.update(options)
    try:
        scheduler = cls.from_config(config)
        scheduler.set_timesteps(min(10, int(scheduler.config.num_train_timesteps)))
    except (ValueError, NotImplementedError, TypeError) as err:
        raise ValueError(f"scheduler {key!r} rejects {', '.join(f'{k}={v!r}' for k, v in options.items()) or 'its config'}: "
                         f"{err}") from None
    return scheduler
