"""Exponential moving average of the UNet weights (used for samples and the exported model).

θ_ema ← d·θ_ema + (1 − d)·θ after every optimizer step (none after a skipped one). With warm-up the decay at update n (counting
from 0) is d_n = min(d, (1 + n)/(10 + n)) (the schedule of TensorFlow's ExponentialMovingAverage with
num_updates, also used by diffusers' EMAModel), so the average is not stuck near the initialisation in
short runs. Buffers are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """The decay used for update number ``step`` (0-based)."""
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


class EMA:
    """Holds ``model``, a frozen copy of the network whose parameters are the running average."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module, skip: torch.Tensor | None = None) -> float:
        """Move the average towards ``model``'s current weights; returns the decay that was used.

        ``skip`` (a bool tensor on the device, the trainer's verdict on this optimizer step): where true the
        average stays where it is, decided on the device. The update count advances either way, so the
        decay schedule stays a function of the optimizer step."""
        d = ema_decay_at(self.num_updates, self.decay, self.warmup)
        weight = 1.0 - d if skip is None else torch.where(skip, 0.0, 1.0 - d)
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach().to(ema_p.dtype), weight)  # ema + w(p - ema): w = 1 - d gives d·ema + (1-d)·p
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)
        self.num_updates += 1
        return d

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, tensors: dict[str, torch.Tensor], num_updates: int) -> None:
        self.model.load_state_dict(tensors)
        self.num_updates = num_updates

    def to(self, device) -> "EMA":
        self.model.to(device)
        return self
