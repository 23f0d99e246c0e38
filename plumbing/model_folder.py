"""What every exported vqldm model folder shares: ``vqldm.json`` (class names, sampling defaults, and the
vqvae its generator was trained on) and the check that the vqvae beside it is still that one.

A denoiser or a prior is only valid for the latents, or codes, it was trained on: a same-shaped vqvae with
other weights or another latent scale would load silently and decode wrong, so loading refuses it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .checkpoint import weights_sha256
from .errors import UserError

VQLDM_JSON = "vqldm.json"


def read_vqldm_json(folder: str | os.PathLike) -> dict:
    """The ``vqldm.json`` of a pipeline folder ({} when absent, e.g. a folder written by diffusers)."""
    path = Path(folder) / VQLDM_JSON
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{str(path)!r} is not readable JSON ({err}); re-export the pipeline") from None


def check_trained_vqvae(vqvae, info: dict, folder: str | os.PathLike, model: str = "UNet", check_scale: bool = True) -> None:
    """A generator is valid only for the latents (or codes) it was trained on: refuse a vqvae whose weights
    (and, for a denoiser of scaled latents, whose latent scale) differ from those recorded in ``vqldm.json``.
    Folders that record nothing are not checked. ``model`` names the generator in the message."""
    fix = f"put back the vqvae the folder was exported with (or retrain the {model} on this autoencoder)"
    recorded = info.get("autoencoder_scaling_factor")
    actual = float(vqvae.config.scaling_factor)
    if check_scale and recorded is not None and abs(float(recorded) - actual) > 1e-6 * max(1.0, abs(actual)):
        raise UserError(f"the vqvae in {str(folder)!r} has scaling_factor {actual:.6g} but the {model} was trained at "
                        f"{float(recorded):.6g}; {fix}")
    recorded_hash = info.get("vqvae_weights_sha256")
    if recorded_hash:
        actual_hash = weights_sha256(vqvae)
        if actual_hash != recorded_hash:
            raise UserError(f"the vqvae in {str(folder)!r} has weights sha256 {actual_hash[:16]}... but the {model} was "
                            f"trained on {recorded_hash[:16]}...; {fix}")
