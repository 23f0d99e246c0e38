"""A growing codebook for the vq quantizer: start with few codes and split the ones that carry the most
error on a schedule, up to the table's K rows (``quantizer.grow_from``, ``grow_every``, ``grow_factor``).

Notation as in autoencoder/quantizer.py: e_k the codebook rows, N_k and m_k the EMA cluster size and sum
of assigned vectors (e_k = m_k / N_k), and here D_k the EMA of the *distortion* sum_{i: k_i = k} ||h_i - e_k||^2
(same decay). Only the first A ("active") rows take part in the nearest-code search (the other rows'
distances are +inf), the EMA statistics, the dead-code restarts and the splits.

* Schedule (a function of the optimizer step s, known on the host, so growing reads nothing back from the
  device): A(s) = grow_from, grown every ``grow_every`` steps to min(K, round(A * grow_factor)) (at least
  one more code), 1 < grow_factor <= 2 so that each code splits at most once per growth.
* Split (Linde, Buzo & Gray 1980, "An Algorithm for Vector Quantizer Design": each codeword y becomes
  y(1 +- eps)): the A' - A codes with the largest D_k (the cells whose splitting can lower the error most;
  busy *and* spread out) each become two, e_p - delta (the parent's row) and e_p + delta (a new row c),
  with delta = eps * sigma_p * u, u ~ N(0, I) from the quantizer's seeded generator and sigma_p^2 =
  D_p / (N_p d) the parent cell's spread per dimension. The perturbation direction u cuts the parent's
  cell in two through e_p, so each child inherits about half of its vectors; the statistics are shared
  accordingly: N_c = N_p' = N_p / 2, m_{c, p'} = m_p / 2 +- delta N_p / 2, D_c = D_p' = D_p / 2 -- the
  totals sum N, sum m and sum D are unchanged. With grow_factor = 2 every code splits: LBG's doubling.
* Inactive rows are never chosen in training. Before a checkpoint, an evaluation or the export
  (``sync_codebook``) they are filled with copies of active rows (row j gets row j mod A): the exported
  plain VQModel, whose own argmin has no mask, then still decodes only trained codes -- a duplicate is at
  the same distance as its original, and argmin takes the first (lower, active) index. What the inactive
  rows hold never reaches training (they are masked, and a split overwrites them), so resume stays bit-exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SPLIT_EPS = 0.1  # delta = eps * (the parent cell's RMS spread): far above float rounding, well inside the cell


def active_codes(step: int, grow_from: int, grow_every: int, grow_factor: float, num_codes: int) -> int:
    """A(s): the number of active codes at optimizer step ``step`` (0-based) of the growth schedule."""
    active = min(grow_from, num_codes)
    for _ in range(step // grow_every):
        if active >= num_codes:
            break
        active = min(num_codes, max(active + 1, round(active * grow_factor)))
    return active


def active_mask(num_codes: int, active: int, device) -> torch.Tensor:
    """(K,) bool: True for the first ``active`` rows (made from host integers: no device read)."""
    return torch.arange(num_codes, device=device) < active


def nearest_active_code(flat: torch.Tensor, codebook: torch.Tensor, active: int) -> torch.Tensor:
    """argmin_{j < active} ||flat_i - e_j||: diffusers' cdist with the inactive rows' distances set to +inf
    (arithmetic, no boolean indexing), so ties among active codes break as in the exported VQModel."""
    dist = torch.cdist(flat, codebook)  # (rows, K)
    mask = active_mask(codebook.shape[0], active, flat.device)
    inactive = torch.where(mask, 0.0, math.inf).to(dist.dtype)  # (K,): 0 for active rows, +inf for the others
    return torch.argmin(dist + inactive, dim=1)  # an active distance + 0 is itself, bit for bit


def fill_inactive(codebook: torch.Tensor, active: int) -> torch.Tensor:
    """The codebook with row j >= active replaced by row j mod active (active rows unchanged)."""
    source = torch.arange(codebook.shape[0], device=codebook.device) % active
    return codebook[source]


@torch.no_grad()
def split_codes(codebook: torch.Tensor, cluster_size: torch.Tensor, embed_sum: torch.Tensor, distortion: torch.Tensor,
                active: int, new_active: int, generator: torch.Generator, cosine: bool = False) -> None:
    """Grow from ``active`` to ``new_active`` codes in place: split the ``new_active - active`` active codes
    of largest distortion (see the module docstring). Rows ``active .. new_active - 1`` become the children.
    Everything stays on the device: no host read (the parents are a top-k, indexed by integer tensors)."""
    m = new_active - active
    if not 0 < m <= active:
        raise ValueError(f"a growth from {active} to {new_active} codes splits each code at most once")
    device, d = codebook.device, codebook.shape[1]
    score = torch.where(active_mask(codebook.shape[0], active, device), distortion, torch.full_like(distortion, -math.inf))
    parents = torch.topk(score, m).indices  # (m,), largest distortion first
    children = torch.arange(active, new_active, device=device)
    n_p = cluster_size[parents]
    sigma = (distortion[parents].clamp(min=0) / (n_p.clamp(min=1e-5) * d)).sqrt()  # RMS spread per dimension
    u = torch.randn(m, d, generator=generator).to(device)
    delta = SPLIT_EPS * sigma[:, None] * u  # (m, d)
    e_p = codebook[parents].float()
    lower, upper = e_p - delta, e_p + delta
    if cosine:  # the codes stay on the unit sphere
        lower, upper = F.normalize(lower, dim=1), F.normalize(upper, dim=1)
    codebook[parents] = lower.to(codebook.dtype)
    codebook[children] = upper.to(codebook.dtype)
    half_sum, shift = embed_sum[parents] / 2, delta * (n_p / 2)[:, None]
    embed_sum[parents] = half_sum - shift
    embed_sum[children] = half_sum + shift
    cluster_size[parents] = n_p / 2
    cluster_size[children] = n_p / 2
    half_d = distortion[parents] / 2
    distortion[parents] = half_d
    distortion[children] = half_d
