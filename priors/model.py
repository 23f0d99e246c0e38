"""The prior network: one transformer over the code grid, bidirectional (masked prior) or causal
(autoregressive prior), class-conditional through a class token in front of the sequence.

Sequence layout (T = h * w codes in raster order, K = codebook size)::

    position      0          1 .. T
    token         [class c]  code_1 .. code_T        (masked prior: some codes are the [mask] id K)
    causal input  [class c]  code_1 .. code_{T-1}    (autoregressive prior: output i predicts code_{i+1})

The class token is ``num_classes`` for the "null" class of classifier-free guidance (Ho & Salimans
2022), and the only class of an unconditional prior. Weights and config are saved the diffusers way
(``save_pretrained`` / ``from_pretrained``: config.json + safetensors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, causal: bool, cache: list | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x B x H x n x dh
        if cache is not None:  # incremental decoding: attend to every earlier position (no mask needed)
            if cache:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
            causal = causal and n > 1 and k.shape[2] == n
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-LN transformer block (GPT-2 / ViT layout)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, causal: bool, cache: list | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), causal, cache)
        return x + self.mlp(self.norm2(x))


class CodePrior(ModelMixin, ConfigMixin):
    """p(codes | class) over a ``grid_height x grid_width`` grid of ``codebook_size`` codes.

    ``causal=False``: the masked prior (MaskGIT); ``forward`` returns logits for every position of a
    partially masked grid. ``causal=True``: the autoregressive prior (VQ-VAE's prior as a transformer);
    ``forward`` returns the next-code logits after each prefix.
    """

    @register_to_config
    def __init__(
        self,
        codebook_size: int,
        grid_height: int,
        grid_width: int,
        num_classes: int = 0,
        causal: bool = False,
        width: int = 192,
        layers: int = 4,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"model.width ({width}) must be divisible by model.heads ({heads})")
        self.seq_len = grid_height * grid_width
        self.mask_id = codebook_size  # only the masked prior uses it
        self.tokens = nn.Embedding(codebook_size + 1, width)
        self.classes = nn.Embedding(num_classes + 1, width)  # + the null class (the only one if unconditional)
        self.position = nn.Parameter(torch.zeros(1, self.seq_len + 1, width))
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio, dropout) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, codebook_size)
        nn.init.normal_(self.position, std=0.02)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)  # GPT-2 initialisation
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def class_tokens(self, class_labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        if class_labels is None:
            return torch.full((batch,), self.null_class, dtype=torch.long, device=device)
        return class_labels.to(device=device, dtype=torch.long)

    def forward(self, codes: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """codes: B x n (n <= T; code ids, or the mask id) -> logits B x n x K.

        Masked prior: logits[:, i] is the distribution of code i given the visible codes. Autoregressive
        prior (``codes`` = the first n codes, n < T): logits[:, i] is the distribution of code i given
        codes 0 .. i-1, for i = 0 .. n (n + 1 rows; the first one given the class alone).
        """
        b, n = codes.shape
        x = torch.cat([self.classes(self.class_tokens(class_labels, b, codes.device))[:, None], self.tokens(codes)], dim=1)
        x = x + self.position[:, : n + 1]
        for block in self.blocks:
            x = block(x, self.config.causal)
        logits = self.head(self.norm(x))  # B x (n + 1) x K
        return logits if self.config.causal else logits[:, 1:]

    def step(self, token: torch.Tensor, position: int, caches: list[list]) -> torch.Tensor:
        """Autoregressive decoding with a KV cache: the embedding of one new token (B, at ``position``; the
        class token at position 0) through every layer -> next-code logits B x K."""
        if position == 0:
            x = self.classes(token)[:, None]
        else:
            x = self.tokens(token)[:, None]
        x = x + self.position[:, position : position + 1]
        for block, cache in zip(self.blocks, caches):
            x = block(x, True, cache)
        return self.head(self.norm(x))[:, 0]
