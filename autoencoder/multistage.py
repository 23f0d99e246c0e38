"""Several codes per position: residual VQ and a coarse-to-fine hierarchy (``quantizer.kind``: residual,
hierarchical), the training quantizer and the model class both export to (:class:`ResidualVQModel`).

Residual VQ (Lee et al. 2022, "Autoregressive Image Generation using Residual Quantization", RQ-VAE, eq. 2-4):
with D codebooks e^1 .. e^D and r_0 = h (the pre-quantization latents),

    k_d = argmin_j ||r_{d-1} - e^d_j||,    r_d = r_{d-1} - e^d_{k_d},    z^(d) = sum_{i <= d} e^i_{k_i},

the decoder sees z = z^(D), and the commitment term is beta * mean_d ||h - sg[z^(d)]||^2 (every partial sum
pulls h, so the first codes carry the most). D codes per position from D tables of K rows: K^D
combinations at the cost of D x K codes.

Hierarchical (VQ-VAE-2, Razavi et al. 2019: a coarse top grid conditioning a fine bottom grid). Here it
is the same recursion with a grid per stage: stage d quantizes its residual averaged over s_d x s_d blocks
(s_d = 2^(D-d): the top grid is 2^(D-1) times coarser), and its codes, repeated back over the blocks, are
subtracted before the next, finer stage (the multi-scale residual quantizer of VAR, Tian et al. 2024). The
top codes hold the coarse layout; each bottom code is chosen given them (it quantizes what they left).
Deviation from VQ-VAE-2, and why: no separate top encoder and no decoder conditioned on each level -- one
decoder reads the sum z, so a generator of the pre-quantization latents h (the latent UNet) determines
every grid by nearest lookup, and the exported model decodes exactly what it trained on.

Both are :class:`ResidualVQModel` (a ``diffusers.VQModel`` with the extra codebooks and a
``stage_factors`` config: all 1 for residual, 2^(D-1) .. 1 for the hierarchy), saved with
``save_pretrained`` as safetensors; ``DiffusionPipeline.from_pretrained`` loads it when vqldm is installed
(``model_index.json`` names ``["vqldm", "ResidualVQModel"]``). Its ``encode``/``decode`` are VQModel's:
``decode(h)`` quantizes by the recursion above.

Code sequences (the priors' view): one token in [0, K) per code, stage after stage (all of stage 1's grid in
raster order, then stage 2's, ...), so an autoregressive prior generates coarse to fine and the position
says which codebook a token is from. The stage-major order was chosen, not measured against predicting the
D codes of a position together; it needs no change to the priors.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from diffusers import ModelMixin, VQModel
from diffusers.configuration_utils import register_to_config
from torch import nn

from .quantizer import QuantizerConfig, QuantizerOutput, VectorQuantizerEMA, encoder_gradient, nearest_rows, perplexity_of

MULTISTAGE_KINDS = ("residual", "hierarchical")

__all__ = ["ModelMixin", "ResidualVQModel", "MultiStageQuantizer", "stage_factors", "MULTISTAGE_KINDS"]


def stage_factors(kind: str, stages: int) -> list[int]:
    """The grid factor of each stage: 1 (full grid) for residual; 2^(D-1), ..., 2, 1 for the hierarchy."""
    if kind == "residual":
        return [1] * stages
    return [2 ** (stages - 1 - d) for d in range(stages)]


def pool(r: torch.Tensor, s: int) -> torch.Tensor:
    """The mean of each s x s block (the stage's input on its coarser grid)."""
    return F.avg_pool2d(r, s) if s > 1 else r


def spread(e: torch.Tensor, s: int) -> torch.Tensor:
    """A coarse grid's codes repeated over their s x s blocks (back on the full grid)."""
    return e.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3) if s > 1 else e


def lookup(codebook: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Indices B x h x w -> codes B x D x h x w."""
    return F.embedding(indices, codebook).permute(0, 3, 1, 2)


class ResidualVQModel(VQModel):
    """A ``diffusers.VQModel`` whose latents are quantized by several codebooks in turn (see the module doc).

    ``quantize.embedding`` is stage 1's codebook (so VQModel's own attributes keep their meaning),
    ``stage_codebooks[i]`` stage i + 2's; every table has ``num_vq_embeddings`` rows."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 3,
        sample_size: int = 32,
        num_vq_embeddings: int = 256,
        norm_num_groups: int = 32,
        vq_embed_dim: int | None = None,
        scaling_factor: float = 1.0,
        norm_type: str = "group",
        mid_block_add_attention=True,
        lookup_from_codebook=False,
        force_upcast=False,
        stage_factors: tuple[int, ...] = (1, 1),
    ):
        super().__init__(
            in_channels=in_channels, out_channels=out_channels, down_block_types=down_block_types,
            up_block_types=up_block_types, block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            act_fn=act_fn, latent_channels=latent_channels, sample_size=sample_size, num_vq_embeddings=num_vq_embeddings,
            norm_num_groups=norm_num_groups, vq_embed_dim=vq_embed_dim, scaling_factor=scaling_factor, norm_type=norm_type,
            mid_block_add_attention=mid_block_add_attention, lookup_from_codebook=lookup_from_codebook,
            force_upcast=force_upcast)
        if len(stage_factors) < 1 or any(int(s) < 1 for s in stage_factors):
            raise ValueError(f"stage_factors {list(stage_factors)} must be one or more factors >= 1")
        dim = vq_embed_dim or latent_channels
        self.stage_codebooks = nn.ModuleList(nn.Embedding(num_vq_embeddings, dim) for _ in stage_factors[1:])

    # ------------------------------------------------------------------ codes
    @property
    def factors(self) -> list[int]:
        return [int(s) for s in self.config.stage_factors]

    def codebooks(self) -> list[nn.Embedding]:
        return [self.quantize.embedding, *self.stage_codebooks]

    def code_grids(self, h: int, w: int) -> list[tuple[int, int]]:
        """The grid of each stage for an h x w latent grid."""
        return [(h // s, w // s) for s in self.factors]

    def quantize_stages(self, h: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Pre-quantization latents B x D x H x W -> (z = the sum of every stage's codes, the indices of
        each stage, B x h_d x w_d), by the recursion of the module doc."""
        b, d, hh, ww = h.shape
        r, z, indices = h.float(), torch.zeros_like(h, dtype=torch.float32), []
        for s, table in zip(self.factors, self.codebooks()):
            x = pool(r, s)
            flat = x.permute(0, 2, 3, 1).reshape(-1, d)
            idx = nearest_rows(flat, table.weight.float()).view(b, hh // s, ww // s)
            up = spread(lookup(table.weight.float(), idx), s)
            z = z + up
            r = r - up
            indices.append(idx)
        return z, indices

    def encode_codes(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents -> (quantized latents in the straight-through form h + (z - h), tokens B x L)."""
        z, indices = self.quantize_stages(h)
        return (h + (z.to(h.dtype) - h)), torch.cat([i.reshape(i.shape[0], -1) for i in indices], dim=1)

    def codes_to_latents(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Tokens B x L (stage-major) of an h x w latent grid -> the quantized latents z, B x D x h x w."""
        b = tokens.shape[0]
        z, start = None, 0
        for (gh, gw), s, table in zip(self.code_grids(h, w), self.factors, self.codebooks()):
            idx = tokens[:, start : start + gh * gw].reshape(b, gh, gw)
            start += gh * gw
            up = spread(lookup(table.weight, idx), s)
            z = up if z is None else z + up
        if start != tokens.shape[1]:
            raise ValueError(f"{tokens.shape[1]} tokens do not fill the {self.code_grids(h, w)} grids of this model")
        return z

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False, return_dict: bool = True, shape=None):
        """VQModel.decode with this model's quantization (``force_not_quantize``: h is already quantized)."""
        quant = h if force_not_quantize else self.encode_codes(h)[0]
        quant2 = self.post_quant_conv(quant)
        dec = self.decoder(quant2, quant if self.config.norm_type == "spatial" else None)
        commit_loss = torch.zeros(h.shape[0], device=h.device, dtype=h.dtype)
        if not return_dict:
            return dec, commit_loss
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=dec, commit_loss=commit_loss)


class MultiStageQuantizer(nn.Module):
    """Trains a :class:`ResidualVQModel`'s codebooks: one :class:`VectorQuantizerEMA` per stage (k-means
    start, EMA, dead-code restarts, across processes, on that stage's residuals), one generator shared by
    all (one state to checkpoint). Its indices are global: stage d's code k is d * K + k, so usage and
    perplexity count D x K codes."""

    def __init__(self, vqmodel: ResidualVQModel, cfg: QuantizerConfig, seed: int = 0, keep_codebook: bool = False):
        super().__init__()
        if keep_codebook:
            raise ValueError("a residual or hierarchical quantizer starts its codebooks afresh")
        self.cfg = cfg
        stage_cfg = replace(cfg, kind="vq", gradient="ste")  # each stage's own output is not what the decoder sees
        self.stages = nn.ModuleList(VectorQuantizerEMA(table, stage_cfg, seed=seed + 101 * d)
                                    for d, table in enumerate(vqmodel.codebooks()))
        self.generator = torch.Generator().manual_seed(seed + 7919)
        for stage in self.stages:
            stage.generator = self.generator
        self.factors = vqmodel.factors
        self.num_codes = vqmodel.config.num_vq_embeddings
        self.total_codes = self.num_codes * len(self.stages)
        self.growing = False

    @property
    def restarts(self) -> torch.Tensor:
        return sum(stage.restarts for stage in self.stages)

    def sync_codebook(self) -> None:
        for stage in self.stages:
            stage.sync_codebook()

    def forward(self, h: torch.Tensor, step: int | None = None) -> QuantizerOutput:
        """h: B x D x H x W -> z_q (value h + sg[z - h], the gradient as ``quantizer.gradient``), the RQ-VAE
        commitment term, the stages' codebook losses, global indices B x L, perplexity over D x K codes."""
        b, d, hh, ww = h.shape
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = h.float()
            r, z = h.detach(), torch.zeros_like(h)
            commitment = codebook_loss = torch.zeros((), device=h.device)
            indices = []
            for i, (stage, s) in enumerate(zip(self.stages, self.factors)):
                out = stage(pool(r, s), step=step)  # k-means start, EMA, restarts on this stage's residuals
                # the codes this batch was quantized with (training: the stage's output, before its EMA step;
                # eval: looked up as ResidualVQModel.quantize_stages does)
                e = out.z_q.detach() if self.training else lookup(stage.codebook.float(), out.indices)
                up = spread(e, s)
                z = z + up
                r = r - up
                commitment = commitment + F.mse_loss(h, z.detach())
                codebook_loss = codebook_loss + out.codebook_loss
                indices.append(out.indices.reshape(b, -1) + i * self.num_codes)
            commitment = commitment / len(self.stages)
            indices = torch.cat(indices, dim=1)
            counts = torch.bincount(indices.reshape(-1), minlength=self.total_codes).float()
            z_q = encoder_gradient(self.cfg.gradient, h, z)
        loss = self.cfg.beta * commitment + codebook_loss
        return QuantizerOutput(z_q, indices, loss, commitment, codebook_loss, perplexity_of(counts))
