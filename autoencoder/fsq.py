"""FSQ: finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

Notation of the paper: z (here h) has d channels, channel i is quantized to one of L_i levels, and the
implicit codebook is the product grid of prod_i L_i codes; nothing is learned in the quantizer, so there
is no codebook loss, no EMA and no dead code to restart (usage and perplexity are still reported).

Deviation from the paper, and why. The paper bounds z by f(z) = floor(L/2) tanh(z) (with a half-step
offset for even L) and rounds: q = round(f(z)). That q is *not* the grid point nearest to z, so a plain
``diffusers.VQModel`` -- whose ``decode(h)`` takes the Euclidean-nearest codebook row of h -- would decode
something else than the model was trained on. Here the bound is the identity inside the grid: per channel
the grid values are g in {-1, ..., 1}, L_i evenly spaced points (g_j = -1 + 2 j / (L_i - 1)), and

    q_i = nearest g to clamp(z_i, -1, 1)   (j_i = round((clamp(z_i, -1, 1) + 1) (L_i - 1) / 2))

which is the nearest point of the product grid to z itself (nearest in a product grid is per-channel
nearest, and clamping a channel into [-1, 1] does not change which grid value is nearest). So the
materialised grid in ``quantize.embedding.weight`` makes the VQModel's own lookup pick the same code
(up to float rounding of cdist within ~1e-6 of a cell boundary). The gradient is straight-through
(the identity into z, through the clamp too), and a penalty beta * ||z - clamp(z, -1, 1)||^2
(``quantizer.beta``) keeps z from drifting out of the box, the job tanh does in the paper.

Index of a code: the mixed-radix number of its per-channel level indices, channel 0 fastest,
k = sum_i j_i prod_{m < i} L_m (the paper's ``codes_to_indexes`` order); row k of the materialised
codebook is that code, so ``embedding.weight[k]`` is what index k decodes to, everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import QuantizerConfig, QuantizerOutput, perplexity_of, straight_through


def fsq_levels(levels: list[int] | None, dim: int, codebook_size: int) -> list[int]:
    """The levels to use: ``levels`` checked against the codebook vector size ``dim`` and ``codebook_size``
    (which must equal prod(levels): validated, never changed), or -- when ``levels`` is None -- ``dim``
    levels as equal as possible whose product is ``codebook_size`` (its prime factors dealt out, largest
    first, to the smallest level). A ValueError naming the key to set when neither works."""
    if levels is not None:
        if len(levels) != dim:
            raise ValueError(f"quantizer.levels has {len(levels)} entries but the codebook vectors have {dim} channels "
                             f"(model.vq_embed_dim or model.latent_channels); give {dim} levels")
        if any(n < 2 for n in levels):
            raise ValueError(f"quantizer.levels {levels} must all be >= 2")
        if math.prod(levels) != codebook_size:
            raise ValueError(f"quantizer.levels {levels} give {math.prod(levels)} codes but model.codebook_size is "
                             f"{codebook_size}; set model.codebook_size={math.prod(levels)}")
        return list(levels)
    primes, n, p = [], codebook_size, 2
    while n > 1:
        while n % p == 0:
            primes.append(p)
            n //= p
        p += 1
    if len(primes) < dim:
        raise ValueError(f"model.codebook_size={codebook_size} cannot be split into {dim} FSQ levels of at least 2; "
                         f"set quantizer.levels (e.g. [8, 5, 5, 5] for 1000 codes in 4 channels) and model.codebook_size to match")
    out = [1] * dim
    for q in sorted(primes, reverse=True):
        out[out.index(min(out))] *= q
    return sorted(out, reverse=True)


def fsq_grid(levels: list[int]) -> torch.Tensor:
    """The materialised codebook: prod(levels) x d, row k = the code of mixed-radix index k (channel 0 fastest)."""
    k = torch.arange(math.prod(levels))
    basis = torch.tensor([math.prod(levels[:i]) for i in range(len(levels))])
    n = torch.tensor(levels)
    j = (k[:, None] // basis) % n  # K x d level indices
    return (-1 + 2 * j.float() / (n - 1).float()).float()  # grid values in [-1, 1]


class FSQ(nn.Module):
    """Per-channel rounding onto the grid; materialises the grid into ``embedding`` (owned by a VQModel)."""

    def __init__(self, embedding: nn.Embedding, cfg: QuantizerConfig, seed: int = 0, keep_codebook: bool = False):
        super().__init__()
        if keep_codebook:
            raise ValueError("an FSQ codebook is its fixed grid; it cannot keep a learned codebook")
        self.cfg = cfg
        self._embedding = (embedding,)
        k, d = embedding.weight.shape
        self.num_codes, self.dim = k, d
        self.levels = fsq_levels(cfg.levels, d, k)
        embedding.weight.requires_grad_(False)
        self.register_buffer("level_counts", torch.tensor(self.levels), persistent=False)  # L_i
        self.register_buffer("radix", torch.tensor([math.prod(self.levels[:i]) for i in range(d)]), persistent=False)
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))  # none, ever: reported as 0
        self.generator = torch.Generator().manual_seed(seed + 7919)  # unused; the trainer checkpoints every kind's
        self.sync_codebook()

    @property
    def codebook(self) -> torch.Tensor:
        return self._embedding[0].weight

    @torch.no_grad()
    def sync_codebook(self) -> None:
        """Write the grid into the VQModel's codebook (it never changes: this only repairs a stale copy)."""
        self.codebook.data.copy_(fsq_grid(self.levels).to(self.codebook))

    def indices(self, h: torch.Tensor) -> torch.Tensor:
        """h: B x d x H x W -> B x H x W mixed-radix code indices of the nearest grid points."""
        steps = (self.level_counts - 1).view(1, -1, 1, 1).float()
        j = torch.round((h.clamp(-1, 1) + 1) * steps / 2).long()  # B x d x H x W, level index per channel
        return (j * self.radix.view(1, -1, 1, 1)).sum(1)

    def forward(self, h: torch.Tensor, step: int | None = None) -> QuantizerOutput:
        """h: B x d x H x W -> straight-through grid points, the box penalty, indices, perplexity."""
        b, d, hh, ww = h.shape
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = h.float()
            indices = self.indices(h.detach())  # B x H x W
            q = F.embedding(indices, self.codebook.detach().float()).permute(0, 3, 1, 2)  # the exported rows
            box = F.mse_loss(h, h.clamp(-1, 1))  # ||z - clamp(z, -1, 1)||^2: 0 inside the box
            counts = torch.bincount(indices.reshape(-1), minlength=self.num_codes).float()
            z_q = straight_through(h, q)
        zero = torch.zeros((), device=h.device)
        return QuantizerOutput(z_q, indices, self.cfg.beta * box, box, zero, perplexity_of(counts))
