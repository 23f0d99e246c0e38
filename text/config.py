"""The ``text`` section of a stage-2 run config: which text encoder conditions the UNet.

``encoder: null`` (the default) is a class-conditional or unconditional model; ``scratch`` trains a small
byte-level T5 encoder with the UNet, as LDM trained its text transformer from scratch (no download, any
language, suits small domains); anything else is a Hugging Face Hub name or a local folder of a pretrained
CLIP text or T5 encoder, kept frozen (Stable Diffusion's choice: its states are already meaningful).
"""

from __future__ import annotations

from dataclasses import dataclass

SCRATCH = "scratch"
# tokens per prompt: CLIP's context, and what diffusers' LDMTextToImagePipeline pads every prompt to
DIFFUSERS_TEXT_LENGTH = 77


@dataclass
class TextConfig:
    encoder: str | None = None  # null: no text; "scratch"; or a Hub name / local folder (CLIP text, T5)
    # tokens per caption, padded and truncated; 77 is CLIP's context and what diffusers' LDMTextToImagePipeline
    # feeds its encoder, so an exported folder samples the same in plain diffusers
    max_length: int = DIFFUSERS_TEXT_LENGTH
    # the scratch encoder (a T5 encoder over ByT5's byte vocabulary): width, layers, heads
    width: int = 256
    layers: int = 4
    heads: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        if self.encoder is not None and not str(self.encoder).strip():
            raise ValueError("text.encoder is empty; use scratch, a Hub name or a local folder, or null for no text")
        if self.max_length < 2:
            raise ValueError(f"text.max_length must be >= 2 (a token and the end-of-text mark), got {self.max_length}")
        for key in ("width", "layers", "heads"):
            if getattr(self, key) < 1:
                raise ValueError(f"text.{key} must be >= 1, got {getattr(self, key)}")
        if self.width % self.heads:
            raise ValueError(f"text.width {self.width} must be divisible by text.heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"text.dropout must be in [0, 1), got {self.dropout}")

    @property
    def enabled(self) -> bool:
        return self.encoder is not None

    @property
    def trained(self) -> bool:
        """Whether the encoder is trained with the UNet (scratch) or frozen (pretrained)."""
        return self.encoder == SCRATCH
