"""What the denoiser is conditioned on during training, batch by batch: nothing, a class label, a caption, or a
low-resolution image.

:func:`training_conditioning` returns an object with one method, ``inputs(items, labels, generator)`` ->
the keyword arguments of the denoiser's call for a batch of cache items (views included), with
the classifier-free-guidance dropout applied (a label -> the null class, a caption -> the empty prompt).
Captions are tokenized once, at the start of the run (N x max_length ids in memory, rows shared by an
image and its mirrored view).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..latents.guidance import drop_labels, drop_prompts
from ..plumbing.errors import UserError
from ..plumbing.trainkit import to_device
from .model import null_class


class NoConditioning:
    def inputs(self, items: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> dict:
        return {}


class ImageConditioningInputs:
    """Super-resolution: the low-resolution images of the batch's items (mirrored views included), read
    from the cache; no dropout (the model is always conditioned)."""

    def __init__(self, split, device):
        self.split, self.device = split, device

    def inputs(self, items, labels, generator) -> dict:
        return {"low_res": to_device(self.split.low_res_batch(items), self.device)}


class ClassConditioningInputs:
    def __init__(self, num_classes: int, dropout: float, device):
        self.null, self.dropout, self.device = null_class(num_classes), dropout, device

    def inputs(self, items, labels, generator) -> dict:
        return {"class_labels": to_device(drop_labels(labels, self.dropout, self.null, generator), self.device)}


class TextConditioningInputs:
    """Token ids of every training caption of the cached ``split``; a trained (scratch) encoder runs inside the
    denoiser on ``input_ids``, a frozen one here, without gradients, giving ``encoder_hidden_states``."""

    def __init__(self, split, encoder, dropout: float, device, autocast=None, log: Callable[[str], None] = print):
        if split.captions is None:
            raise UserError("a text model needs captions; give each image a `text` in metadata.jsonl or a .txt beside it")
        captions = list(split.captions)
        self.split, self.encoder, self.dropout, self.device = split, encoder, dropout, device
        self.autocast = autocast
        self.ids = encoder.tokenize(captions)  # N x L int64
        self.null = encoder.null_ids()[0]
        cut = encoder.too_long(captions)
        if cut:
            log(f"text: {cut} of {len(captions)} captions are longer than text.max_length={encoder.max_length} tokens "
                f"and are cut there (raise text.max_length to keep them whole)")

    def inputs(self, items, labels, generator) -> dict:
        rows = self.split.rows(items)  # a mirrored view has its image's caption
        ids = to_device(drop_prompts(self.ids[rows], self.dropout, self.null, generator), self.device)
        if self.encoder.trained:
            return {"input_ids": ids}
        with torch.no_grad(), (self.autocast() if self.autocast else torch.autocast("cpu", enabled=False)):
            return {"encoder_hidden_states": self.encoder.model(ids)[0]}


def training_conditioning(split, num_classes: int, text_encoder, superres: bool, dropout: float, device, autocast=None,
                          log=print):
    """The conditioning of a run on the cached ``split``: its low-resolution images (``superres``), its captions
    through ``text_encoder``, its class labels (``num_classes`` > 0), or none."""
    if superres:
        return ImageConditioningInputs(split, device)
    if text_encoder is not None:
        return TextConditioningInputs(split, text_encoder, dropout, device, autocast, log)
    if num_classes:
        return ClassConditioningInputs(num_classes, dropout, device)
    return NoConditioning()
