"""``VQTextToImagePipeline``: prompt -> text encoder states -> cross-attention UNet denoising in the VQ
latent space -> VQ decoder -> images.

The components and folder layout are diffusers' ``LDMTextToImagePipeline``'s (``vqvae``, ``bert`` — the
text encoder, whatever its architecture —, ``tokenizer``, ``unet``, ``scheduler``), and ``model_index.json``
names that class, so ``diffusers.DiffusionPipeline.from_pretrained(folder)`` samples a vqldm text model with
no vqldm code (pass ``height = width = 8 x the latent size``: that pipeline assumes an f8 autoencoder). This
class adds what the rest of vqldm's pipelines have: any scheduler, the measured defaults of ``vqldm.json``,
image-to-image and inpainting with a prompt, tensor outputs, and the check that the vqvae is the one the
UNet was trained on. Prompts are tokenized as in training and as diffusers does: padded to
``text_max_length`` (77), no attention mask; the null condition of guidance is the empty prompt.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..text.config import DIFFUSERS_TEXT_LENGTH
from ..text.encoders import NULL_PROMPT
from .pipeline import VQLatentDiffusionPipeline


class VQTextToImagePipeline(VQLatentDiffusionPipeline):
    """``pipe(prompt="a red circle", guidance_scale=3.0, num_inference_steps=25, generator=g)``."""

    model_cpu_offload_seq = "bert->unet->vqvae"
    FOLDER_PARTS = ("vqvae", "bert", "tokenizer", "unet", "scheduler")

    def __init__(self, vqvae, bert, tokenizer, unet, scheduler):
        super(VQLatentDiffusionPipeline, self).__init__()  # DiffusionPipeline.__init__; _setup registers the parts
        self._setup(vqvae, unet, scheduler, bert=bert, tokenizer=tokenizer)

    @property
    def is_text_model(self) -> bool:
        return True

    @property
    def max_length(self) -> int:
        return int(self.info.get("text_max_length") or DIFFUSERS_TEXT_LENGTH)

    def _text_parts(self) -> dict:
        return {"text_encoder": self.bert, "tokenizer": self.tokenizer}

    def _model_num_classes(self) -> int:
        return 0

    @property
    def default_guidance(self) -> float:
        """The guidance of a call with a prompt and no ``guidance_scale``: vqldm.json's measured
        ``default_guidance``, else 1 (none)."""
        return float(self.info.get("default_guidance") or 1.0)

    def _guidance_scale(self, guidance_scale: float | None, prompt) -> float:
        if guidance_scale is None:
            return self.default_guidance if prompt is not None else 1.0
        guidance_scale = float(guidance_scale)
        if not math.isfinite(guidance_scale) or guidance_scale <= 0:
            raise ValueError(f"guidance_scale must be a finite number > 0, got {guidance_scale}")
        if guidance_scale != 1.0 and prompt is None:
            raise ValueError(f"guidance_scale={guidance_scale:g} needs a prompt (guidance pulls samples towards it)")
        return guidance_scale

    def _class_tensor(self, class_labels, batch_size: int):
        if class_labels is not None:
            raise ValueError("this model is text-to-image; it takes prompt=..., not class_labels")
        return None

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                              return_tensors="pt").input_ids

    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> the text encoder's last hidden states B x max_length x D (on the pipeline's device)."""
        return self.bert(self.tokenize(prompts).to(self.device))[0]

    def _prompt_context(self, prompt, batch_size: int):
        if prompt is None:
            prompts = [NULL_PROMPT] * batch_size  # unconditional: the null condition
        elif isinstance(prompt, str):
            prompts = [prompt] * batch_size
        elif isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
            prompts = list(prompt)
            if len(prompts) == 1 and batch_size > 1:
                prompts = prompts * batch_size
            if len(prompts) != batch_size:
                raise ValueError(f"got {len(prompts)} prompts for batch_size {batch_size}; pass one prompt or one per image")
        else:
            raise TypeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        with self._autocast():
            context = self.encode_prompt(prompts)
            null = self.encode_prompt([NULL_PROMPT])
        return context, null
