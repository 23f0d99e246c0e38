"""Stage 1: a VQ autoencoder that compresses images to a grid of codebook vectors (exports a diffusers VQModel)."""

from .errors import UserError

__all__ = ["UserError"]
