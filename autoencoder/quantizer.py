"""The training-time vector quantizer: nearest-code lookup with the fixes diffusers' VectorQuantizer lacks.

Notation (van den Oord et al. 2017, "Neural Discrete Representation Learning"): h is the encoder output
after ``quant_conv`` (pre-quantization latents, B x D x H x W), e_j the codebook rows, and
k = argmin_j ||h - e_j||. The decoder sees z_q = h + sg[e_k - h] (straight-through: forward value e_k,
gradient of identity into the encoder).

* beta weights the *commitment* term beta * ||h - sg[e_k]||^2, which pulls the encoder toward its code
  (beta = 0.25 as in the paper). diffusers/taming with ``legacy=True`` put beta on the codebook side.
* The codebook starts from encoder outputs (k-means, or random samples), not a tiny uniform ball where
  most codes are never nearest to anything.
* ``ema`` codebook update (paper, appendix A.1; decay 0.99): N_k <- g N_k + (1-g) n_k,
  m_k <- g m_k + (1-g) sum_{i: k_i = k} h_i, e_k = m_k / N_k (with Laplace smoothing of N). No codebook
  loss is needed then. ``gradient`` keeps the plain codebook loss ||sg[h] - e_k||^2 for comparison.
* Dead codes (EMA cluster size below a threshold) are restarted from current encoder outputs, which is
  what keeps codebook usage near 100% (Dhariwal et al. 2020, Jukebox; Zeghidour et al. 2021).
* ``grow_from`` (autoencoder/growing.py): a codebook that starts with few active codes and splits the
  highest-distortion ones on a schedule up to K (Linde, Buzo & Gray 1980); inactive rows are masked.
* ``lookup: cosine`` (l2-normalised codes, Yu et al. 2022 "ViT-VQGAN", sec. 3.2; LlamaGen): the codebook
  rows are kept on the unit sphere, k = argmax_j cos(h, e_j), and the decoder sees e_k, a unit vector; the
  commitment term and the EMA statistics use h / ||h||, and the EMA codebook is renormalised after each
  update (restarts and k-means start from normalised encoder outputs too). It exports exactly: with every
  ||e_j|| = 1, ||h - e_j||^2 = ||h||^2 + 1 - 2 h.e_j, so diffusers' argmin ||h - e_j|| *is* the cosine
  choice whatever ||h||, and its output is e_k. The lookup below therefore runs diffusers' own cdist on the
  unnormalised h: same inputs, same function, same ties. (Decoding h with ``force_not_quantize=True`` feeds
  the decoder an unnormalised vector it never saw in training.)

The codebook tensor is the ``embedding`` of a ``diffusers.VQModel``'s quantizer, shared, so the exported
model holds exactly the codes that were trained, and ``VQModel.decode`` picks the same nearest code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .growing import active_codes, active_mask, fill_inactive, nearest_active_code, split_codes
from .rotation import rotation_trick


@dataclass
class QuantizerConfig:
    # vq: this module; simvq: autoencoder/simvq.py; fsq: autoencoder/fsq.py (all export as a plain VQModel);
    # residual, hierarchical: autoencoder/multistage.py (``stages`` VQ codebooks; export as vqldm's ResidualVQModel)
    kind: Literal["vq", "simvq", "fsq", "residual", "hierarchical"] = "vq"
    stages: int = 2  # residual: codes per position (RQ-VAE's D); hierarchical: levels, each grid 2x coarser
    beta: float = 0.25  # commitment weight on the encoder side (VQ-VAE paper); fsq: weight of its box penalty
    gradient: Literal["ste", "rotation"] = "ste"  # into the encoder: straight-through, or the rotation trick (vq, simvq)
    levels: list[int] | None = None  # fsq: levels per channel, e.g. [8, 5, 5, 5]; None = derived from the codebook
    codebook_update: Literal["ema", "gradient"] = "ema"
    ema_decay: float = 0.99  # VQ-VAE paper, appendix A.1
    init: Literal["kmeans", "samples", "uniform"] = "kmeans"  # uniform = diffusers' tiny ball (for comparison)
    kmeans_iters: int = 10
    restart_dead_codes: bool = True
    dead_code_threshold: float = 1.0  # EMA count of assignments per step below which a code is dead
    restart_every: int = 1  # optimizer steps between dead-code checks
    restart_until: int = 0  # last optimizer step with restarts (0 = never stop); lets the decoder settle at the end
    lookup: Literal["euclidean", "cosine"] = "euclidean"  # cosine: unit-norm codes, nearest by angle (ViT-VQGAN)
    # growing codebook (vq; autoencoder/growing.py): start with grow_from active codes, and every grow_every
    # optimizer steps split the highest-distortion ones, x grow_factor, up to model.codebook_size (None = off)
    grow_from: int | None = None
    grow_every: int = 1000
    grow_factor: float = 2.0

    def __post_init__(self):
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"quantizer.ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.beta < 0:
            raise ValueError(f"quantizer.beta must be >= 0, got {self.beta}")
        if self.lookup == "cosine" and self.codebook_update != "ema":
            # a gradient step moves codes off the unit sphere, and then diffusers' Euclidean lookup no longer
            # picks the cosine-nearest code: the exported model would decode something else
            raise ValueError("quantizer.lookup=cosine needs quantizer.codebook_update=ema (it keeps the codes at unit norm)")
        if self.gradient == "rotation" and self.kind == "fsq":
            raise ValueError("quantizer.gradient=rotation applies to kind vq or simvq; use gradient=ste with kind=fsq")
        if self.lookup == "cosine" and self.kind != "vq":
            raise ValueError(f"quantizer.lookup=cosine applies to kind vq only; remove it for kind={self.kind}")
        if self.stages < 1 or (self.stages < 2 and self.kind in ("residual", "hierarchical")):
            raise ValueError(f"quantizer.stages must be >= 2 for kind={self.kind} (one stage is kind=vq), got {self.stages}")
        if self.levels is not None and self.kind != "fsq":
            raise ValueError(f"quantizer.levels applies to kind fsq only; remove it for kind={self.kind}")
        if self.grow_from is not None:
            if self.kind != "vq":  # simvq's codes all move with W, fsq's grid is fixed: nothing to grow
                raise ValueError(f"quantizer.grow_from applies to kind vq only; remove it for kind={self.kind}")
            if self.grow_from < 1 or self.grow_every < 1:
                raise ValueError(f"quantizer.grow_from and quantizer.grow_every must be >= 1, "
                                 f"got {self.grow_from} and {self.grow_every}")
            if not 1.0 < self.grow_factor <= 2.0:  # at most doubling: each code splits at most once per growth
                raise ValueError(f"quantizer.grow_factor must be in (1, 2], got {self.grow_factor}")


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor  # B x D x H x W, straight-through quantized latents
    indices: torch.Tensor  # B x H x W, code index per position
    loss: torch.Tensor  # commitment (+ codebook loss in gradient mode), scalar
    commitment_loss: torch.Tensor
    codebook_loss: torch.Tensor
    perplexity: torch.Tensor  # exp(entropy) of this batch's code distribution


def straight_through(h: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward value q, gradient of the identity into h."""
    return h + (q - h).detach()


def encoder_gradient(kind: str, h: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The decoder's input: value h + sg[q - h]; gradient into h of the identity (``ste``) or through the
    rotation trick's sg[lambda R] (``rotation``, autoencoder/rotation.py). No gradient reaches q."""
    return rotation_trick(h, q) if kind == "rotation" else straight_through(h, q)


def nearest_code(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """argmin_j ||flat_i - e_j||, computed as diffusers' VectorQuantizer does (cdist), so ties break alike."""
    return torch.argmin(torch.cdist(flat, codebook), dim=1)


NEAREST_CODE_BLOCK = 1 << 24  # distances held at once by nearest_rows (64 MB of float32)


def nearest_rows(flat: torch.Tensor, codebook: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """:func:`nearest_code` searched in blocks of rows, so that K x rows distances stay under ``block``
    (default ``NEAREST_CODE_BLOCK``; an FSQ grid of 2^16 codes would need 16 GB for 64k latent vectors at
    once). Each block has at least 256 rows, so cdist takes the same matrix-product path as on the whole input."""
    rows = max(256, (block or NEAREST_CODE_BLOCK) // codebook.shape[0])
    blocks = flat.tensor_split(max(1, flat.shape[0] // rows))  # each block: rows to 2 x rows vectors
    return torch.cat([torch.argmin(torch.cdist(part, codebook), dim=1) for part in blocks])


def perplexity_of(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the code distribution given by ``counts`` (K,): K when uniform, 1 when one code."""
    probs = counts / counts.sum().clamp(min=1)
    return torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum())


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Plain Lloyd k-means on rows of ``x``; empty clusters are re-seeded from random rows."""
    n = x.shape[0]
    pick = torch.randint(0, n, (k,), generator=generator) if n < k else torch.randperm(n, generator=generator)[:k]
    centers = x[pick.to(x.device)].clone()
    for _ in range(iters):
        assign = nearest_code(x, centers)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        empty = counts == 0
        centers = torch.where(empty[:, None], centers, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            refill = torch.randint(0, n, (int(empty.sum()),), generator=generator).to(x.device)
            centers[empty] = x[refill]
    return centers


class VectorQuantizerEMA(nn.Module):
    """Trains the codebook ``embedding`` (an ``nn.Embedding`` owned by a diffusers VQModel)."""

    def __init__(self, embedding: nn.Embedding, cfg: QuantizerConfig, seed: int = 0, keep_codebook: bool = False):
        """``keep_codebook``: start from the codebook ``embedding`` holds (published weights) instead of
        ``cfg.init``; the EMA statistics still start at the first batch, at the average rate."""
        super().__init__()
        self.cfg = cfg
        self.keep_codebook = keep_codebook
        # Held by reference, not registered: the VQModel owns (saves, moves) the codebook.
        self._embedding = (embedding,)
        k, d = embedding.weight.shape
        self.num_codes, self.dim = k, d
        ema = cfg.codebook_update == "ema"
        embedding.weight.requires_grad_(not ema)
        self.cosine = cfg.lookup == "cosine"
        if self.cosine:  # unit-norm from the start (matters for init: uniform, which has no init step)
            with torch.no_grad():
                embedding.weight.copy_(F.normalize(embedding.weight, dim=1))
        self.register_buffer("cluster_size", torch.zeros(k))
        self.register_buffer("embed_sum", embedding.weight.detach().clone())
        self.register_buffer("initialized", torch.tensor(cfg.init == "uniform" and not keep_codebook))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.growing = cfg.grow_from is not None
        if self.growing:  # only then: a fixed codebook's state (and its old checkpoints) keep their keys
            first = self._scheduled(0)
            self.register_buffer("active", torch.tensor(first, dtype=torch.long))  # rows in use: 0 .. active-1
            self.register_buffer("distortion", torch.zeros(k))  # D_k: EMA of the squared error assigned to code k
            with torch.no_grad():
                self.embed_sum.mul_(active_mask(k, first, self.embed_sum.device)[:, None])
        # Same seed on every process: restarts choose the same rows everywhere, codebooks stay identical.
        self.generator = torch.Generator().manual_seed(seed + 7919)
        # host copies of ``initialized`` and ``steps``, so a training step reads no buffer from the device;
        # None: read them once (again after load_state_dict)
        self._host_state: tuple[bool, int] | None = None
        self._host_active: int | None = None  # host copy of ``active`` (growing codebook), likewise

    def _load_from_state_dict(self, *args, **kwargs):
        self._host_state = self._host_active = None
        return super()._load_from_state_dict(*args, **kwargs)

    def _host(self) -> tuple[bool, int]:
        if self._host_state is None:
            self._host_state = (bool(self.initialized), int(self.steps))
        return self._host_state

    def num_active(self) -> int:
        """Codes in use: K, or the growing codebook's active rows (read from the device once after a load)."""
        if not self.growing:
            return self.num_codes
        if self._host_active is None:
            self._host_active = int(self.active)
        return self._host_active

    def _scheduled(self, step: int) -> int:
        c = self.cfg
        return active_codes(step, c.grow_from, c.grow_every, c.grow_factor, self.num_codes)

    @property
    def codebook(self) -> torch.Tensor:
        return self._embedding[0].weight

    @torch.no_grad()
    def sync_codebook(self) -> None:
        """The VQModel's codebook *is* the trained codebook (SimVQ and FSQ materialise theirs); a growing one
        gets copies of active codes in its inactive rows, so the plain VQModel never picks an untrained row."""
        if self.growing and self.num_active() < self.num_codes:
            self.codebook.data.copy_(fill_inactive(self.codebook.data, self.num_active()))

    def _nearest(self, flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        if not self.growing:
            return nearest_code(flat, codebook)
        return nearest_active_code(flat, codebook, self.num_active())

    # ------------------------------------------------------------------ helpers
    def _gather_rows(self, flat: torch.Tensor, max_rows: int) -> torch.Tensor:
        """Up to ``max_rows`` rows of ``flat`` from every process, concatenated (same result on all ranks)."""
        flat = flat.detach().float()
        if flat.shape[0] > max_rows:
            flat = flat[torch.randperm(flat.shape[0], generator=self.generator)[:max_rows].to(flat.device)]
        if not _distributed():
            return flat
        sizes = [torch.zeros((), dtype=torch.long, device=flat.device) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, torch.tensor(flat.shape[0], device=flat.device))
        width = int(max(s.item() for s in sizes))
        padded = torch.zeros(width, flat.shape[1], device=flat.device)
        padded[: flat.shape[0]] = flat
        parts = [torch.zeros_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])

    @torch.no_grad()
    def initialize(self, flat: torch.Tensor) -> None:
        """The codebook from encoder outputs (the active rows of a growing one; its other rows copy them)."""
        a = self.num_active()
        if self.keep_codebook:  # published codes: only the EMA statistics start here
            codes = self.codebook.detach().float().clone()
        else:
            rows = self._gather_rows(flat, max_rows=max(20 * a, 4096))
            if self.cfg.init == "kmeans":
                codes = kmeans(rows, a, self.cfg.kmeans_iters, self.generator)
            else:
                pick = torch.randint(0, rows.shape[0], (a,), generator=self.generator).to(rows.device)
                codes = rows[pick]
        if self.cosine:  # rows are unit vectors already; the k-means means are not
            codes = F.normalize(codes, dim=1)
        if self.growing:
            codes = codes[torch.arange(self.num_codes, device=codes.device) % a]  # K rows: row j is code j mod a
        self.codebook.data.copy_(codes)
        # Start the EMA as if each code had been hit at the average rate, so early steps don't kill codes.
        average = flat.shape[0] * (dist.get_world_size() if _distributed() else 1) / a
        if self.growing:
            self.cluster_size.copy_(active_mask(self.num_codes, a, flat.device).float() * average)
            self.embed_sum.copy_(codes * self.cluster_size[:, None])
            # D_k at the same start: the rate times this batch's mean squared error to its nearest code
            err = (flat.float() - codes[nearest_active_code(flat.float(), codes, a)]).pow(2).sum(1).mean()
            if _distributed():  # the same D on every process: splits choose the same parents everywhere
                dist.all_reduce(err)
                err = err / dist.get_world_size()
            self.distortion.copy_(self.cluster_size * err)
        else:
            self.cluster_size.fill_(average)
            self.embed_sum.copy_(codes * average)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """One EMA step; returns whether it applied (a bool tensor: decided on the device, no host read).
        A batch holding NaN/inf latents changes nothing."""
        counts = torch.bincount(indices, minlength=self.num_codes).float()
        sums = torch.zeros(self.num_codes, self.dim, device=flat.device).index_add_(0, indices, flat.detach().float())
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        # A non-finite batch (every rank sees it through the all-reduce) must not poison the codebook: the
        # trainer's NaN guard skips such a batch, and skipping only works if nothing was updated here.
        finite = torch.isfinite(sums).all()
        g = self.cfg.ema_decay
        self.cluster_size.copy_(torch.where(finite, self.cluster_size * g + counts * (1 - g), self.cluster_size))
        self.embed_sum.copy_(torch.where(finite, self.embed_sum * g + sums * (1 - g), self.embed_sum))
        # Laplace smoothing keeps e_k finite for codes with N_k ~ 0 (Sonnet's VQ-VAE-EMA, eps = 1e-5)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (n + self.num_codes * 1e-5) * n
        codebook = self.embed_sum / smoothed[:, None]
        codebook = F.normalize(codebook, dim=1) if self.cosine else codebook
        self.codebook.data.copy_(torch.where(finite, codebook.to(self.codebook.dtype), self.codebook.data))
        return finite

    @torch.no_grad()
    def _restart_dead(self, flat: torch.Tensor, counts: torch.Tensor) -> int:
        if self.cfg.codebook_update == "gradient" and not self.growing:
            # gradient mode keeps its own running count in cluster_size (a growing codebook's, every batch)
            self.cluster_size.mul_(self.cfg.ema_decay).add_(counts, alpha=1 - self.cfg.ema_decay)
        dead = self.cluster_size < self.cfg.dead_code_threshold
        if self.growing:  # inactive rows are not dead, only not yet split into
            dead = dead & active_mask(self.num_codes, self.num_active(), dead.device)
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        rows = self._gather_rows(flat, max_rows=max(n_dead, 1024))
        pick = torch.randint(0, rows.shape[0], (n_dead,), generator=self.generator).to(rows.device)
        new = rows[pick]
        self.codebook.data[dead] = new.to(self.codebook.dtype)
        restart_size = max(self.cfg.dead_code_threshold, 1.0)
        self.cluster_size[dead] = restart_size
        self.embed_sum[dead] = new * restart_size
        if self.growing:  # a restarted code's distortion at its count times the active codes' mean per vector
            alive = (~dead) & active_mask(self.num_codes, self.num_active(), dead.device)
            per_vector = (self.distortion * alive).sum() / (self.cluster_size * alive).sum().clamp(min=1e-5)
            self.distortion[dead] = restart_size * per_vector
        self.restarts.add_(n_dead)
        return n_dead

    # ------------------------------------------------------------------ growing codebook (growing.py)
    @torch.no_grad()
    def _grow(self, step: int | None) -> None:
        """At the first batch of an optimizer step whose scheduled count exceeds the active one: split codes.
        Decided on the host from the step number; no device read."""
        s = self._host()[1] if step is None else step  # the 0-based optimizer step this batch belongs to
        target, a = self._scheduled(s), self.num_active()
        if target <= a:
            return
        while a < target:  # one growth per scheduled step (a resume or a jump may owe several)
            nxt = min(target, min(self.num_codes, max(a + 1, round(a * self.cfg.grow_factor))))
            split_codes(self.codebook.data, self.cluster_size, self.embed_sum, self.distortion, a, nxt, self.generator,
                        cosine=self.cosine)
            a = nxt
        self.active.fill_(a)
        self._host_active = a

    @torch.no_grad()
    def _track_distortion(self, flat: torch.Tensor, indices: torch.Tensor, codebook: torch.Tensor,
                          counts: torch.Tensor) -> None:
        """D_k <- g D_k + (1-g) sum_{i: k_i = k} ||h_i - e_k||^2 (gradient mode: N_k likewise, every batch),
        with the codebook the batch was quantized with; a non-finite batch changes nothing."""
        err = (flat.detach().float() - codebook[indices]).pow(2).sum(1)  # (B*H*W,)
        stats = torch.stack([torch.zeros(self.num_codes, device=flat.device).index_add_(0, indices, err), counts])
        if _distributed():
            dist.all_reduce(stats)
        finite = torch.isfinite(stats).all()
        g = self.cfg.ema_decay
        self.distortion.copy_(torch.where(finite, self.distortion * g + stats[0] * (1 - g), self.distortion))
        if self.cfg.codebook_update == "gradient":
            self.cluster_size.copy_(torch.where(finite, self.cluster_size * g + stats[1] * (1 - g), self.cluster_size))

    # ------------------------------------------------------------------ forward
    def forward(self, h: torch.Tensor, step: int | None = None) -> QuantizerOutput:
        """h: B x D x H x W pre-quantization latents -> straight-through quantized latents and losses.

        ``step``: the optimizer step this batch belongs to (the training loop's ``step // grad_accumulation``),
        so that dead-code restarts are scheduled in optimizer steps like everything else and happen once per
        optimizer step (on its first micro-batch) under gradient accumulation; without it every training call
        counts as one step. The EMA statistics are updated on every batch.

        With ``lookup: cosine`` the straight-through input, the commitment term and the codebook statistics
        use h / ||h|| (per position, over D); the returned z_q is still the codebook rows."""
        b, d, hh, ww = h.shape
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = h.float()
            flat = h.permute(0, 2, 3, 1).reshape(-1, d)  # (B*H*W) x D
            # nearest code of the raw h: for unit-norm codes it is the cosine choice, computed as diffusers does
            lookup_rows = flat.detach()
            if self.cosine:
                h = F.normalize(h, dim=1)  # B x D x H x W, unit vectors
                flat = h.permute(0, 2, 3, 1).reshape(-1, d)
            if self.training and not self._host()[0]:
                self.initialize(flat)
                self._host_state = (True, self._host()[1])
            if self.training and self.growing:
                self._grow(step)
            codebook = self.codebook.float()
            indices = self._nearest(lookup_rows, codebook.detach())  # B*H*W
            z_q = F.embedding(indices, codebook).view(b, hh, ww, d).permute(0, 3, 1, 2)  # B x D x H x W
            commitment = F.mse_loss(h, z_q.detach())
            if self.cfg.codebook_update == "gradient":
                codebook_loss = F.mse_loss(z_q, h.detach())
            else:
                codebook_loss = torch.zeros((), device=h.device)
            loss = self.cfg.beta * commitment + codebook_loss
            counts = torch.bincount(indices, minlength=self.num_codes).float()
            if self.training:
                # ``steps``: optimizer steps begun (1-based); a batch that begins one may restart dead codes
                before = self._host()[1]
                n = before + 1 if step is None else step + 1
                new_step = n != before
                self.steps.fill_(n)
                self._host_state = (True, n)
                finite = None
                if self.cfg.codebook_update == "ema":
                    finite = self._ema_update(flat, indices)
                if self.growing:
                    self._track_distortion(flat, indices, codebook.detach(), counts)
                restarting = new_step and self.cfg.restart_dead_codes and (
                    self.cfg.restart_until <= 0 or n <= self.cfg.restart_until)
                # the one host read of a step, and only on a restart step (every restart_every optimizer steps)
                if restarting and n % self.cfg.restart_every == 0 and (finite is None or bool(finite)):
                    if _distributed() and self.cfg.codebook_update == "gradient":
                        dist.all_reduce(counts)
                    self._restart_dead(flat, counts)
            perplexity = perplexity_of(counts)
            z_q = encoder_gradient(self.cfg.gradient, h, z_q.detach())
        return QuantizerOutput(z_q, indices.view(b, hh, ww), loss, commitment, codebook_loss, perplexity)
