"""SimVQ: the codebook as a learned linear map of a frozen random basis (Zhu et al. 2024, "Addressing
Representation Collapse in Vector Quantized Models with One Linear Layer", sec. 3).

Notation of the paper: C (K x d) a frozen random basis, drawn once from the seed (N(0, 1/d) rows, so
||c_k|| ~ 1), W (d x d) the one learned linear layer, and the codebook E = C W, e_k its rows. For an
encoder output z (here h, one d-vector per position): k = argmin_j ||z - e_j||, and

    L = beta * ||z - sg[e_k]||^2 + ||sg[z] - e_k||^2

(beta = 0.25 on the commitment side, as for vq). The codebook term's gradient reaches W only, and moving W
moves *every* code at once (the whole span of C rotates and stretches), so unused codes follow the used
ones: the paper's fix for codebook collapse, which needs neither EMA nor dead-code restarts. The decoder
sees h + sg[e_k - h] (straight-through, or the rotation trick with ``quantizer.gradient: rotation``).
W starts at the identity, so E starts as C (a published codebook, when a run starts from one: C is it).

The VQModel's ``quantize.embedding.weight`` holds E materialised (no gradient): every forward recomputes
E = C W, looks codes up in it and writes it there, and :meth:`SimVQ.sync_codebook` writes it after the
last optimizer step, before a checkpoint, an evaluation or the export. So the exported plain VQModel (its
own Euclidean lookup in E) decodes exactly what was trained; W and C travel in the training checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import QuantizerConfig, QuantizerOutput, encoder_gradient, nearest_code, perplexity_of


class SimVQ(nn.Module):
    """Writes E = C W into ``embedding`` (an ``nn.Embedding`` owned by a diffusers VQModel)."""

    def __init__(self, embedding: nn.Embedding, cfg: QuantizerConfig, seed: int = 0, keep_codebook: bool = False):
        """``keep_codebook``: start from the codebook ``embedding`` holds (published weights): C is that
        codebook, so E = C W = C at W = I."""
        super().__init__()
        self.cfg = cfg
        self._embedding = (embedding,)  # held by reference: the VQModel owns (saves, moves) it
        k, d = embedding.weight.shape
        self.num_codes, self.dim = k, d
        embedding.weight.requires_grad_(False)  # a materialised copy of C W; W is the parameter
        self.generator = torch.Generator().manual_seed(seed + 7919)
        basis = torch.randn(k, d, generator=self.generator) / d**0.5  # C, frozen
        if keep_codebook:
            basis = embedding.weight.detach().float().clone()
        self.register_buffer("basis", basis)
        self.weight = nn.Parameter(torch.eye(d))  # W
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))  # none, ever: reported as 0
        self.sync_codebook()

    @property
    def codebook(self) -> torch.Tensor:
        return self._embedding[0].weight

    def codes(self) -> torch.Tensor:
        """E = C W (K x d), differentiable in W."""
        return self.basis.float() @ self.weight.float()

    @torch.no_grad()
    def sync_codebook(self) -> None:
        """Materialise E = C W into the VQModel's codebook (call after the last optimizer step)."""
        self.codebook.data.copy_(self.codes().to(self.codebook.dtype))

    def forward(self, h: torch.Tensor, step: int | None = None) -> QuantizerOutput:
        """h: B x d x H x W -> straight-through quantized latents, the SimVQ loss, indices, perplexity."""
        b, d, hh, ww = h.shape
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = h.float()
            codebook = self.codes()  # K x d, carries W's gradient
            self.codebook.data.copy_(codebook.detach().to(self.codebook.dtype))  # the VQModel looks up in the same E
            flat = h.permute(0, 2, 3, 1).reshape(-1, d)  # (B*H*W) x d
            indices = nearest_code(flat.detach(), self.codebook.detach().float())  # as diffusers does, in E
            e = F.embedding(indices, codebook).view(b, hh, ww, d).permute(0, 3, 1, 2)  # B x d x H x W
            commitment = F.mse_loss(h, e.detach())
            codebook_loss = F.mse_loss(e, h.detach())
            loss = self.cfg.beta * commitment + codebook_loss
            counts = torch.bincount(indices, minlength=self.num_codes).float()
            z_q = encoder_gradient(self.cfg.gradient, h, e.detach())
        return QuantizerOutput(z_q, indices.view(b, hh, ww), loss, commitment, codebook_loss, perplexity_of(counts))
