"""What every vqldm model that samples images offers, and one loader for any of them.

Two kinds of model sample images here: :class:`~.pipeline.VQLatentDiffusionPipeline` (a UNet denoises
continuous latents) and :class:`~.prior_pipeline.CodePriorPipeline` (a transformer picks VQ codes). Code
that only samples (``vqldm generate``, evaluation, benchmarks) talks to the :class:`ImageSampler`
protocol and gets its model from :func:`load_sampler`, so it never asks which kind it holds.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

from ..plumbing.errors import ModelFolderError  # noqa: F401  (re-exported: the pipelines raise it from here)

if TYPE_CHECKING:  # the protocol costs no torch/diffusers import (the CLI imports this module to build its parser)
    import torch


@runtime_checkable
class ImageSampler(Protocol):
    """A model that turns noise (and optionally class labels, an image and a mask) into images."""

    info: dict  # the folder's vqldm.json: class names, sampling defaults, the vqvae it was trained on

    @property
    def device(self) -> torch.device: ...

    @property
    def num_classes(self) -> int:
        """Real classes; 0 for an unconditional model."""

    @property
    def class_names(self) -> list[str]: ...

    def class_index(self, name_or_index: str | int) -> int:
        """A class name from vqldm.json or an index -> its index; ValueError if the model has no such class."""

    @property
    def default_guidance(self) -> float:
        """The guidance scale a call with class labels and no ``guidance_scale`` uses (1 = none)."""

    @property
    def max_inference_steps(self) -> int:
        """The most ``num_inference_steps`` a call accepts."""

    def resolve_steps(self, num_inference_steps: int | None = None) -> int:
        """The steps a call with this ``num_inference_steps`` runs (None: the model's default)."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of each image a call returns."""

    @property
    def sampler_name(self) -> str:
        """What draws the samples, for reports: a scheduler's class name, or "masked prior"."""

    def set_progress_bar_config(self, **kwargs) -> None: ...

    def __call__(self, batch_size: int = 1, class_labels: int | Sequence[int] | torch.Tensor | None = None,
                 guidance_scale: float | None = None, num_inference_steps: int | None = None,
                 generator: torch.Generator | None = None, output_type: str = "pil", image=None, mask_image=None,
                 return_dict: bool = True):
        """Images (``.images``); each model adds its own keyword arguments and rejects unknown ones."""


def load_sampler(path: str | os.PathLike | None = None, device: str | torch.device = "cpu", *,
                 freeze_unet: bool = False) -> ImageSampler:
    """The model in the folder ``path`` on ``device``: a prior folder's ``vqldm.json`` says ``model_type:
    code-prior``; anything else loads as a latent diffusion pipeline (None: the model shipped with vqldm).

    ``freeze_unet``: sample through the frozen CPU copy of the UNet where it applies (a latent diffusion
    pipeline on the CPU in fp32; a prior has no UNet); it pays off over a few hundred UNet calls.
    Raises :class:`ModelFolderError` for a folder that cannot be loaded, ValueError for a bad ``device``.
    """
    from . import pipeline, prior_pipeline  # looked up at call time, so tests can replace either loader

    if prior_pipeline.is_prior_folder(path):
        return prior_pipeline.load_prior_pipeline(path, device=device)
    return pipeline.load_pipeline(path, device=device, freeze_unet=freeze_unet)


def torch_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device that exists on this machine; ValueError otherwise."""
    import torch

    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but no CUDA GPU is available; use 'cpu'")
    return device


@contextmanager
def model_folder_errors():
    """The shared folder checks (pickles refused, vqldm.json read, the vqvae's fingerprint) raise the CLI's
    UserError; a loader raises them as ModelFolderError, so Python callers catch one ValueError kind."""
    from ..plumbing.errors import UserError

    try:
        yield
    except UserError as err:
        raise ModelFolderError(str(err)) from None
