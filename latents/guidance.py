"""Classifier-free guidance, the training half (Ho & Salimans 2022): with probability ``p`` a training
label is replaced by the null class, so one network learns both p(x | class) and p(x). Both latent
stages call this one function; the sampling half (mixing the two predictions) lives in each stage's
``sampling.py``."""

from __future__ import annotations

import torch


def drop_labels(labels: torch.Tensor, p: float, null_class: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by ``null_class`` with probability ``p`` (classifier-free guidance training).

    The coin flips are drawn on the generator's device (CPU for the trainer) and moved to ``labels``.
    """
    if p <= 0:
        return labels
    device = generator.device if generator is not None else labels.device
    drop = torch.rand(labels.shape, generator=generator, device=device) < p
    return torch.where(drop.to(labels.device), torch.full_like(labels, null_class), labels)
