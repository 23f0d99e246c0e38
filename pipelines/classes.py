"""Class conditioning shared by the pipelines (latent diffusion and code priors): class names and indices
from ``vqldm.json``, the null class of classifier-free guidance, and label checking."""

from __future__ import annotations

import torch

from ..plumbing.errors import UserError


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

    def class_index(self, name_or_index: str | int) -> int:
        """A class given as an index or a name from vqldm.json -> its index; UserError if unknown."""
        if not self.num_classes:
            raise UserError("this model is unconditional; drop --class (and --guidance)")
        text = str(name_or_index).strip()
        names = self.class_names
        if text.lstrip("-").isdigit():
            idx = int(text)
        elif text.lower() in [n.lower() for n in names]:
            idx = [n.lower() for n in names].index(text.lower())
        else:
            raise UserError(f"unknown class {text!r}; use an index 0..{self.num_classes - 1} or one of: {', '.join(names)}")
        if not 0 <= idx < self.num_classes:
            raise UserError(f"class {idx} is out of range; this model has classes 0..{self.num_classes - 1}")
        return idx

    def _class_tensor(self, class_labels, batch_size: int) -> torch.Tensor | None:
        if class_labels is None:
            if self.num_classes:  # unconditional samples from a class-conditional model: the null class
                return torch.full((batch_size,), self.null_class, dtype=torch.long, device=self.device)
            return None
        if not self.num_classes:
            raise UserError("this model is unconditional; it takes no class labels (drop --class)")
        labels = torch.as_tensor(class_labels, dtype=torch.long).flatten()
        if labels.numel() == 1 and batch_size > 1:
            labels = labels.expand(batch_size)
        if labels.numel() != batch_size:
            raise UserError(f"got {labels.numel()} class labels for {batch_size} images; pass one label or one per image")
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.numel():
            raise UserError(f"class {int(bad[0])} is out of range; this model has classes 0..{self.num_classes - 1}")
        return labels.to(self.device)
