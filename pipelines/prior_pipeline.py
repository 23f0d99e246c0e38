"""``CodePriorPipeline``: a prior over the VQ codes -> code grid -> the vqvae's codebook and decoder -> images.

Loads a folder written by ``vqldm train-prior`` (``prior/``, ``vqvae/``, ``vqldm.json``) and samples with
the same call signature as :class:`VQLatentDiffusionPipeline` where the ideas coincide (``batch_size``,
``class_labels``, ``guidance_scale``, ``num_inference_steps``, ``generator``, ``output_type``,
``image`` + ``mask_image`` for inpainting), plus ``temperature``, ``top_k`` and ``top_p``. So
``vqldm generate`` and ``vqldm evaluate generation`` work on either kind of model folder.

Inpainting (masked prior): the init image is encoded to codes; a code is kept where every pixel it covers
is kept by the mask, and the prior fills in the rest. Kept codes are unchanged in the output.

Errors speak the Python API (ValueError / TypeError naming the parameter; ``ModelFolderError`` for a folder
that cannot be loaded), as in :mod:`.pipeline`.
"""

from __future__ import annotations

import json
import operator
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from diffusers import ImagePipelineOutput, VQModel
from tqdm.auto import tqdm

from ..autoencoder.model import apply_missing_scale_rule, code_mask, decode_codes, encode_indices, vq_model_class
from ..plumbing.checkpoint import refuse_pickle
from ..plumbing.images import size_hw
from ..plumbing.model_folder import VQLDM_JSON, check_trained_vqvae, read_vqldm_json
from ..plumbing.runs import bar_disable
from ..priors.config import PriorSamplingConfig
from ..priors.export import MODEL_TYPE
from ..priors.model import CodePrior
from ..priors.sampling import sample_codes
from .classes import ClassConditioning
from .inputs import to_image_tensor, to_mask_tensor, to_output
from .sampler import ModelFolderError, model_folder_errors, torch_device

OUTPUT_TYPES = ("pil", "np", "pt", "codes")


@dataclass
class PriorPipelineOutput(ImagePipelineOutput):
    """The images, and the code grids (B x h x w) they were decoded from."""

    codes: torch.Tensor | None = None


def is_prior_folder(path: str | os.PathLike | None) -> bool:
    """True for a folder written by ``vqldm train-prior`` (or its run folder)."""
    if path is None:
        return False
    p = Path(path)
    for folder in (p, p / "prior"):
        info = folder / VQLDM_JSON
        if info.is_file():
            try:
                return json.loads(info.read_text(encoding="utf-8")).get("model_type") == MODEL_TYPE
            except (OSError, json.JSONDecodeError):
                return False
    return False


class CodePriorPipeline(ClassConditioning):
    """``pipe(batch_size=8, class_labels=[7] * 8, guidance_scale=2.0, num_inference_steps=8, generator=g)``."""

    def __init__(self, vqvae: VQModel, prior: CodePrior, info: dict):
        self.vqvae, self.prior, self.info = vqvae, prior, dict(info)
        self.kind = "autoregressive" if prior.config.causal else "masked"  # how it decodes (priors/sampling.py)
        self._progress = {"disable": False}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "CodePriorPipeline":
        """Load a prior folder (or its train-prior run folder); ModelFolderError for one that cannot be loaded."""
        path = Path(path)
        with model_folder_errors():
            refuse_pickle(path)
        if not path.exists():
            raise ModelFolderError(f"model folder {str(path)!r} not found; pass a prior folder (holding prior/, vqvae/ and vqldm.json)")
        if not (path / VQLDM_JSON).is_file() and (path / "prior" / VQLDM_JSON).is_file():
            path = path / "prior"  # a train-prior run folder
        with model_folder_errors():
            info = read_vqldm_json(path)
        if info.get("model_type") != MODEL_TYPE:
            raise ModelFolderError(f"{str(path)!r} is not a prior folder (vqldm.json has no model_type {MODEL_TYPE!r}); "
                                   f"pass the prior/ folder of `vqldm train-prior`")
        if info.get("kind") not in ("masked", "autoregressive"):
            raise ModelFolderError(f"{str(path / VQLDM_JSON)!r} names an unknown prior kind {info.get('kind')!r}; "
                                   f"choose masked or autoregressive")
        for part in ("prior", "vqvae"):
            if not any((path / part).glob("*.safetensors")):
                raise ModelFolderError(f"{str(path / part)!r} holds no .safetensors weights; re-export the prior (vqldm loads no pickles)")
        try:
            prior = CodePrior.from_pretrained(path / "prior", use_safetensors=True).eval()
            vqvae = vq_model_class(path / "vqvae").from_pretrained(path / "vqvae", use_safetensors=True).eval()
        except Exception as err:  # diffusers raises several kinds for bad folders
            raise ModelFolderError(f"could not load the prior folder {str(path)!r} ({type(err).__name__}: "
                                   f"{str(err).splitlines()[0][:160]}); re-export it") from None
        apply_missing_scale_rule(vqvae)
        with model_folder_errors():
            check_trained_vqvae(vqvae, info, path, model="prior", check_scale=False)  # codes, not scaled latents
        if int(vqvae.config.num_vq_embeddings) != int(prior.config.codebook_size):
            raise ModelFolderError(f"the vqvae in {str(path)!r} has {vqvae.config.num_vq_embeddings} codes but the prior "
                                   f"models {prior.config.codebook_size}; put back the vqvae the prior was trained on")
        if (info.get("kind") == "autoregressive") != bool(prior.config.causal):
            raise ModelFolderError(f"{str(path)!r}: vqldm.json says a {info.get('kind')} prior but the weights are the "
                                   f"other kind; re-export it")
        return cls(vqvae, prior, info)

    def to(self, device) -> "CodePriorPipeline":
        self.vqvae.to(device)
        self.prior.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.prior.parameters()).device

    def _model_num_classes(self) -> int:
        return int(self.prior.config.num_classes)

    def set_progress_bar_config(self, **kwargs) -> None:
        self._progress.update(kwargs)

    def set_scheduler(self, name: str, **options) -> None:
        """A prior's only "scheduler" is its own decoding (``name`` = its kind), so a step sweep over samplers
        can include it; any other name is a ValueError."""
        if name != self.kind or options:
            raise ValueError(f"this is a {self.kind} prior: it samples codes and has no {name!r} scheduler")

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.prior.config.grid_height), int(self.prior.config.grid_width)

    @property
    def max_inference_steps(self) -> int:
        """Masked prior: one code per round at the slowest, so at most as many rounds as codes in the grid.
        Autoregressive prior: always one step per code."""
        h, w = self.grid
        return h * w

    def resolve_steps(self, num_inference_steps: int | None = None) -> int:
        """Decoding rounds of a call: the masked prior's ``num_inference_steps`` (1..max_inference_steps), else
        the folder's default_steps; the autoregressive prior takes one step per code whatever it is given."""
        if self.kind == "autoregressive":
            return self.max_inference_steps
        steps = operator.index(num_inference_steps if num_inference_steps is not None else (self.info.get("default_steps") or 8))
        if not 1 <= steps <= self.max_inference_steps:
            raise ValueError(f"num_inference_steps must be in 1..{self.max_inference_steps} (a masked prior decodes at "
                             f"least one of its {self.max_inference_steps} codes per round), got {steps}")
        return steps

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of each decoded image."""
        return (int(self.vqvae.config.out_channels), *size_hw(self.vqvae.config.sample_size))

    @property
    def sampler_name(self) -> str:
        return f"{self.kind} prior"

    def sampling_defaults(self, **overrides) -> PriorSamplingConfig:
        """The folder's sampling settings (vqldm.json ``default_*``), with the non-None ``overrides``; ValueError
        names the parameter (``temperature``, ``top_k``, ``top_p``) of a bad override."""
        i = self.info
        values = dict(steps=int(i.get("default_steps") or 8), temperature=float(i.get("default_temperature") or 1.0),
                      top_k=i.get("default_top_k"), top_p=i.get("default_top_p"), guidance=float(i.get("default_guidance") or 1.0),
                      choice_temperature=float(i.get("default_choice_temperature", 4.5)))
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return PriorSamplingConfig(**values)
        except ValueError as err:
            raise ValueError(str(err).replace("sampling.", "")) from None

    # ------------------------------------------------------------------ inpainting
    def _known_codes(self, image, mask_image, batch_size: int) -> torch.Tensor:
        """B x T codes of the init image, -1 where the mask says regenerate (a code is kept only if every
        pixel it covers is kept)."""
        c = self.vqvae.config.in_channels
        hw = size_hw(self.vqvae.config.sample_size)
        x = to_image_tensor(image, c, hw, "image").to(self.device)
        with torch.no_grad():
            _, idx = encode_indices(self.vqvae, self.vqvae.encode(x).latents)
        codes = idx.reshape(idx.shape[0], -1)
        if mask_image is not None:
            repaint = code_mask(self.vqvae, to_mask_tensor(mask_image, hw), self.grid).to(self.device)
            if repaint.shape[0] == 1 and codes.shape[0] > 1:
                repaint = repaint.expand(codes.shape[0], -1, -1, -1)
            codes = torch.where(repaint.reshape(repaint.shape[0], -1) > 0, torch.full_like(codes, -1), codes)
        if codes.shape[0] == 1 and batch_size > 1:
            codes = codes.expand(batch_size, -1)
        if codes.shape[0] != batch_size:
            raise ValueError(f"got {codes.shape[0]} images for batch_size {batch_size}; pass one image or one per output")
        return codes

    # ------------------------------------------------------------------ sampling
    @torch.inference_mode()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        image=None,
        mask_image=None,
        return_dict: bool = True,
    ):
        """Generate images (or ``output_type="codes"``: B x h x w code indices).

        ``guidance_scale`` / ``num_inference_steps`` / ``temperature`` / ``top_k`` / ``top_p`` default to the
        folder's vqldm.json (guidance: :attr:`default_guidance` with class labels, else 1); the autoregressive
        prior takes one step per code whatever ``num_inference_steps`` says. ``image`` + ``mask_image``
        inpaint (masked prior). The diffusion pipeline's ``eta``, ``quantize``, ``strength``,
        ``decode_batch_size`` and ``latents`` mean nothing for codes: passing one is a TypeError.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(map(repr, OUTPUT_TYPES))}, got {output_type!r}")
        if operator.index(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if (image is None) != (mask_image is None):
            raise ValueError("a prior regenerates the masked part of an image: pass image and mask_image together")
        if image is not None and self.kind == "autoregressive":
            raise ValueError("inpainting (image with mask_image) needs a masked prior; this one is autoregressive")
        guidance_scale = self._guidance_scale(guidance_scale, class_labels)
        steps = self.resolve_steps(num_inference_steps)
        labels = self._class_tensor(class_labels, batch_size) if class_labels is not None else None
        sampling = self.sampling_defaults(steps=steps, temperature=temperature, top_k=top_k, top_p=top_p,
                                          guidance=guidance_scale)
        known = self._known_codes(image, mask_image, batch_size) if image is not None else None
        g = generator[0] if isinstance(generator, list) else generator
        # one draw from the caller's generator (or torch's global one) seeds the sampler: no global reseeding
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=g).item())
        bar = None if self._progress.get("disable") else (lambda it: tqdm(it, desc=self._progress.get("desc", self.kind), leave=False, disable=bar_disable(True)))
        codes = sample_codes(self.prior, self.kind, labels, batch_size, sampling, seed, known=known, progress=bar)
        if output_type == "codes":
            out = codes.view(batch_size, *self.grid)
        else:
            out = to_output(decode_codes(self.vqvae, codes, self.grid), output_type)
        if not return_dict:
            return (out,)
        return PriorPipelineOutput(images=out, codes=codes.view(batch_size, *self.grid))


def load_prior_pipeline(path: str | os.PathLike, device: str | torch.device = "cpu") -> CodePriorPipeline:
    """The prior folder at ``path`` on ``device`` (ValueError for a device this machine lacks)."""
    device = torch_device(device)  # before the load: a machine without the device fails at once
    return CodePriorPipeline.from_pretrained(path).to(device)
