"""Class conditioning shared by the pipelines (latent diffusion and code priors): class names and indices
from ``vqldm.json``, the null class of classifier-free guidance, the guidance a call defaults to, and label
checking. Errors are ValueErrors in the terms of the Python API (``class_labels``, ``guidance_scale``)."""

from __future__ import annotations

import math

import torch


class ClassConditioning:
    """Mixin: needs ``self.info`` (vqldm.json), ``self.device`` and ``_model_num_classes()``."""

    def _model_num_classes(self) -> int:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Number of real classes (0 for an unconditional model); the null class is index num_classes."""
        if self.info.get("num_classes") is not None:
            return int(self.info["num_classes"])
        return self._model_num_classes()

    @property
    def null_class(self) -> int | None:
        if not self.num_classes:
            return None
        if self.info.get("null_class") is not None:
            return int(self.info["null_class"])
        return self.num_classes

    @property
    def class_names(self) -> list[str]:
        names = self.info.get("class_names")
        return [str(n) for n in names] if names else [str(i) for i in range(self.num_classes)]

    @property
    def default_guidance(self) -> float:
        """The guidance scale of a call with class labels and no ``guidance_scale``: the scale measured for this
        model (vqldm.json ``default_guidance``), else 1; always 1 (no guidance) for an unconditional model."""
        if not self.num_classes:
            return 1.0
        return float(self.info.get("default_guidance") or 1.0)

    def _guidance_scale(self, guidance_scale: float | None, class_labels) -> float:
        """The scale a call uses; classifier-free guidance needs a class-conditional model and class labels
        (unconditional samples of a class-conditional model are the null class's, unguided)."""
        if guidance_scale is None:
            return self.default_guidance if class_labels is not None else 1.0
        guidance_scale = float(guidance_scale)
        if not math.isfinite(guidance_scale) or guidance_scale <= 0:
            raise ValueError(f"guidance_scale must be a finite number > 0, got {guidance_scale}")
        if guidance_scale != 1.0 and not self.num_classes:
            raise ValueError(f"guidance_scale={guidance_scale:g} needs a class-conditional model; this one is unconditional")
        if guidance_scale != 1.0 and class_labels is None:
            raise ValueError(f"guidance_scale={guidance_scale:g} needs class_labels (guidance pulls samples towards a class)")
        return guidance_scale

    def class_index(self, name_or_index: str | int) -> int:
        """A class given as an index or a name from vqldm.json -> its index; ValueError if unknown."""
        if not self.num_classes:
            raise ValueError("this model is unconditional; it has no classes")
        text = str(name_or_index).strip()
        names = self.class_names
        if text.lstrip("-").isdigit():
            idx = int(text)
        elif text.lower() in [n.lower() for n in names]:
            idx = [n.lower() for n in names].index(text.lower())
        else:
            raise ValueError(f"unknown class {text!r}; use an index 0..{self.num_classes - 1} or one of: {', '.join(names)}")
        if not 0 <= idx < self.num_classes:
            raise ValueError(f"class {idx} is out of range; this model has classes 0..{self.num_classes - 1}")
        return idx

    def _class_tensor(self, class_labels, batch_size: int) -> torch.Tensor | None:
        if class_labels is None:
            if self.num_classes:  # unconditional samples from a class-conditional model: the null class
                return torch.full((batch_size,), self.null_class, dtype=torch.long, device=self.device)
            return None
        if not self.num_classes:
            raise ValueError("this model is unconditional; it takes no class_labels")
        labels = torch.as_tensor(class_labels, dtype=torch.long).flatten()
        if labels.numel() == 1 and batch_size > 1:
            labels = labels.expand(batch_size)
        if labels.numel() != batch_size:
            raise ValueError(f"got {labels.numel()} class_labels for batch_size {batch_size}; pass one label or one per image")
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.numel():
            raise ValueError(f"class label {int(bad[0])} is out of range; this model has classes 0..{self.num_classes - 1}")
        return labels.to(self.device)
