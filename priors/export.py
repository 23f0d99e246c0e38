"""Write a prior folder: the prior, the vqvae it was trained on, and ``vqldm.json``.

Layout of ``out_dir`` (written atomically: a temporary folder renamed into place)::

    prior/        CodePrior config.json + diffusion_pytorch_model.safetensors (EMA weights)
    vqvae/        the VQModel whose codes the prior models (scaling_factor explicit)
    vqldm.json    model_type "code-prior", kind (masked | autoregressive), classes, grid and codebook size,
                  sampling defaults (steps, temperature, top-k/top-p, guidance), the vqvae's weights sha256

``vqldm generate --model DIR`` recognises the folder by ``vqldm.json`` and samples codes, then decodes
them through the vqvae's codebook and decoder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..plumbing.checkpoint import AtomicDir, weights_sha256
from ..plumbing.model_folder import VQLDM_JSON
from .config import PriorSamplingConfig

MODEL_TYPE = "code-prior"


def export_prior_folder(vqvae, prior, out_dir: str | os.PathLike, kind: str, sampling: PriorSamplingConfig,
                        class_names: list[str], image_size: int, extra: dict | None = None) -> Path:
    cfg = prior.config
    num_classes = int(cfg.num_classes)
    info = {
        "model_type": MODEL_TYPE,
        "kind": kind,
        "class_names": [str(c) for c in class_names] if num_classes else [],
        "num_classes": num_classes,
        "null_class": prior.null_class if num_classes else None,
        "image_size": int(image_size),
        "channels": int(vqvae.config.in_channels),
        "grid": [int(cfg.grid_height), int(cfg.grid_width)],
        "codebook_size": int(cfg.codebook_size),
        "default_steps": int(sampling.steps) if kind == "masked" else int(cfg.grid_height * cfg.grid_width),
        "default_temperature": float(sampling.temperature),
        "default_top_k": sampling.top_k,
        "default_top_p": sampling.top_p,
        "default_guidance": float(sampling.guidance) if num_classes else 1.0,
        "default_choice_temperature": float(sampling.choice_temperature),
        "autoencoder_scaling_factor": float(vqvae.config.scaling_factor),
        "vqvae_weights_sha256": weights_sha256(vqvae),
        **(extra or {}),
    }
    out_dir = Path(out_dir)
    with AtomicDir(out_dir) as tmp:
        vqvae.save_pretrained(tmp / "vqvae", safe_serialization=True)
        prior.save_pretrained(tmp / "prior", safe_serialization=True)
        (tmp / VQLDM_JSON).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    return out_dir
