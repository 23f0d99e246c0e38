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


def drop_prompts(input_ids: torch.Tensor, p: float, null_ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each row of token ids (B x L) by the empty prompt's ``null_ids`` (L) with probability ``p``: the
    text models' classifier-free guidance training (the null condition is the empty prompt). Draws the same
    coins as :func:`drop_labels`."""
    if p <= 0:
        return input_ids
    device = generator.device if generator is not None else input_ids.device
    drop = torch.rand(input_ids.shape[:1], generator=generator, device=device) < p
    return torch.where(drop.to(input_ids.device)[:, None], null_ids.to(input_ids).expand_as(input_ids), input_ids)
