"""The rotation trick: a gradient estimator for vector quantization (Fifty et al. 2024, "Restructuring Vector
Quantization with the Rotation Trick", sec. 4).

Notation of the paper: e the encoder output (here h, one D-vector per position), q its codebook vector.
With ê = e / ||e||, q̂ = q / ||q||, λ = ||q|| / ||e|| and r = (ê + q̂) / ||ê + q̂||, the matrix

    R = I - 2 r r^T + 2 q̂ ê^T

is the rotation in the plane of (e, q) that takes ê to q̂ (R ê = ê - (ê + q̂) + 2 q̂ = q̂), so λ R e = q.
The decoder sees q̃ = sg[λ R] e: the forward value is q, and the gradient reaching e is λ R^T times the
gradient at q̃, not the identity (straight-through). R is never formed: R e = e - 2 r (r.e) + 2 q̂ (ê.e).

Here the forward value is the straight-through value h + sg[q - h] *bit for bit* (so training, the VQModel's
own lookup and the exported decoder see the same tensor): q̃ = (h + sg[q - h]) + (d - sg[d]) with
d = λ R h - h, where d - sg[d] is exactly 0 in value and carries the gradient λ R - I.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6  # guards ||h|| = 0 and the antipodal case ê = -q̂ (where the rotation plane is undefined)


def rotation_trick(h: torch.Tensor, q: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Forward value ``h + sg[q - h]`` (the straight-through value); gradient into ``h`` through sg[λ R].

    h, q: tensors of the same shape whose vectors lie along ``dim`` (B x D x H x W: dim 1). No gradient
    reaches ``q`` (as with straight-through: the codebook learns from its own loss or by EMA)."""
    h_hat = F.normalize(h.detach(), dim=dim, eps=EPS)  # ê
    q_hat = F.normalize(q.detach(), dim=dim, eps=EPS)  # q̂
    lam = q.detach().norm(dim=dim, keepdim=True) / h.detach().norm(dim=dim, keepdim=True).clamp(min=EPS)  # λ
    r = F.normalize(h_hat + q_hat, dim=dim, eps=EPS)
    rotated = h - 2 * r * (r * h).sum(dim, keepdim=True) + 2 * q_hat * (h_hat * h).sum(dim, keepdim=True)  # R h
    d = lam * rotated - h
    return h + (q - h).detach() + (d - d.detach())  # the straight-through value, plus an exact zero
