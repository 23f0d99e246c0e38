"""``VQLatentDiffusionPipeline``: noise -> UNet denoising in the VQ latent space -> VQ decoder -> images.

A ``diffusers.DiffusionPipeline`` with the components of diffusers' ``LDMPipeline`` (``vqvae``, ``unet``,
``scheduler``). Compared with ``LDMPipeline`` it adds class conditioning with classifier-free guidance,
any scheduler (``pipelines/schedulers.py``), decoding with or without quantization, image-to-image
(SDEdit), inpainting, latent interpolation (``pipelines/inputs.py``), tensor/latent outputs and
non-square latents; it reads a VQ config that lacks ``scaling_factor`` correctly (1.0, not the KL default
0.18215; diffusers issue #6725), and refuses a vqvae other than the one its UNet was trained on.

Errors speak the Python API: a bad argument is a ValueError (TypeError for a wrong kind or an unknown
keyword) naming the parameter; a folder that cannot be loaded is a ``ModelFolderError`` (a ValueError).

Shapes: latents ``B x C x h x w`` (C = ``unet.config.in_channels``, h x w = ``unet.config.sample_size``);
images ``B x c x H x W`` in [-1, 1] internally, returned like diffusers pipelines: PIL images, numpy
``B x H x W x c`` in [0, 1], torch ``B x c x H x W`` in [0, 1], or the raw latents.
"""

from __future__ import annotations

import operator
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from ..autoencoder.model import apply_missing_scale_rule
from ..diffusion.export import export_pipeline_folder
from ..plumbing.model_folder import check_trained_vqvae, read_vqldm_json
from ..diffusion.sampling import denoise
from ..plumbing.checkpoint import refuse_pickle
from ..autoencoder.model import latent_shape, scale_latents, unscale_latents
from ..diffusion.model import condition_channels, unet_num_classes, unet_latent_shape
from ..plumbing.images import size_hw
from .classes import ClassConditioning
from .default_model import DEFAULT_MODEL_DIR
from .fast import UNET_PATHS
from .inputs import slerp, to_image_tensor, to_mask_tensor, to_output
from .sampler import ModelFolderError, model_folder_errors, torch_device
from .schedulers import SCHEDULERS, make_scheduler, scheduler_kind

DEFAULT_STEPS = 50  # diffusers' LDMPipeline default; a folder may override it with vqldm.json "default_steps"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # autocast precision (CUDA)
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def check_components(vqvae, unet) -> None:
    """Raise a one-line ModelFolderError when the UNet cannot denoise this vqvae's latents."""
    vc, vh, vw = latent_shape(vqvae.config)
    uc, uh, uw = unet_latent_shape(unet.config)
    extra = condition_channels(unet.config)
    if uc != vc or extra not in (0, vqvae.config.in_channels):
        raise ModelFolderError(
            f"the UNet works on {uc} latent channels (+ {extra} input channels) but the vqvae produces {vc}; "
            f"use a UNet trained on this autoencoder's latents (unet out_channels = {vc}, in_channels = {vc} "
            f"or {vc + vqvae.config.in_channels} for super-resolution)"
        )
    if (uh, uw) != (vh, vw):
        raise ModelFolderError(
            f"the UNet's sample_size is {uh}x{uw} but the vqvae's latent grid is {vh}x{vw} "
            f"(image {vqvae.config.sample_size} / 2^{len(vqvae.config.block_out_channels) - 1}); "
            f"use a UNet trained on this autoencoder's latents"
        )


# ----------------------------------------------------------------------------- the pipeline
class VQLatentDiffusionPipeline(ClassConditioning, DiffusionPipeline):
    """Latent diffusion on a VQ autoencoder's pre-quantization latents (components as in ``LDMPipeline``).

    ``pipe(batch_size=4, class_labels=[7]*4, guidance_scale=3.0, num_inference_steps=25, generator=g)``.
    Saved folders say ``"_class_name": "LDMPipeline"`` so plain diffusers can load them; load them in vqldm
    with ``VQLatentDiffusionPipeline.from_pretrained(dir)`` or :func:`load_pipeline`.
    """

    model_cpu_offload_seq = "unet->vqvae"

    def __init__(self, vqvae, unet, scheduler):
        super().__init__()
        self._setup(vqvae, unet, scheduler)

    def _setup(self, vqvae, unet, scheduler, **more) -> None:
        """Register the components (``more``: a text model's ``bert`` and ``tokenizer``) and the sampling state."""
        if vqvae is not None and unet is not None:
            apply_missing_scale_rule(vqvae)
            check_components(vqvae, unet)
        self.register_modules(vqvae=vqvae, **more, unet=unet, scheduler=scheduler)
        self._schedule_config = dict(scheduler.config) if scheduler is not None else None  # the training schedule
        self.info: dict = {}  # vqldm.json: class_names, num_classes, null_class, default_scheduler, default_steps
        self.autocast_dtype: torch.dtype | None = None  # fp16/bf16 autocast, applied on CUDA only
        self.freeze_unet = False  # CPU fp32 sampling through a frozen TorchScript UNet (pipelines/fast.py)
        self._frozen = None

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a pipeline folder (vqldm's, or a diffusers ``LDMPipeline`` folder); safetensors only.
        ModelFolderError for a folder that cannot be loaded as it is."""
        path = Path(pretrained_model_name_or_path)
        with model_folder_errors():
            refuse_pickle(path)  # a .ckpt/.bin/.pt handed as the model: name the conversion, never unpickle
        if not path.exists():
            raise ModelFolderError(f"model folder {str(path)!r} not found; pass a pipeline folder (holding model_index.json)")
        if path.is_dir() and not (path / "model_index.json").is_file() and (path / "pipeline" / "model_index.json").is_file():
            path = path / "pipeline"  # a train-diffusion run folder
        if not (path / "model_index.json").is_file():
            raise ModelFolderError(
                f"{str(path)!r} is not a pipeline folder (no model_index.json); pass the pipeline/ folder "
                f"written by `vqldm train-diffusion`"
            )
        for part in cls.FOLDER_PARTS:
            if not (path / part).is_dir():
                raise ModelFolderError(f"pipeline folder {str(path)!r} has no {part}/ subfolder; re-export the pipeline")
        for part in ("vqvae", "unet"):
            if not any((path / part).glob("*.safetensors")):
                raise ModelFolderError(
                    f"{str(path / part)!r} holds no .safetensors weights; vqldm does not load pickles: convert them with "
                    f"`vqldm convert FILE --trust-pickle` if you trust their source"
                )
        kwargs.setdefault("use_safetensors", True)
        try:
            pipe = super().from_pretrained(str(path), **kwargs)
        except ModelFolderError:  # check_components: parts that do not fit together
            raise
        except Exception as err:  # diffusers raises many kinds (OSError, ValueError, JSON errors, ...)
            raise ModelFolderError(f"could not load pipeline {str(path)!r} ({type(err).__name__}: {err}); re-export it") from None
        with model_folder_errors():
            pipe.info = read_vqldm_json(path)
            check_trained_vqvae(pipe.vqvae, pipe.info, path)
        if pipe.info.get("default_scheduler"):  # the sampler chosen for this model by measurement
            try:
                pipe.set_scheduler(pipe.info["default_scheduler"])
            except ValueError as err:
                raise ModelFolderError(f"{str(path / 'vqldm.json')!r}: {err}; fix default_scheduler or "
                                       f"default_scheduler_options") from None
        return pipe

    def save_pretrained(self, save_directory, **kwargs):
        """Write a pipeline folder atomically: components as safetensors, ``model_index.json`` naming
        ``LDMPipeline`` (loads in plain diffusers), and ``vqldm.json``."""
        target = Path(save_directory)
        if target.is_dir() and any(target.iterdir()) and not (target / "model_index.json").is_file():
            raise FileExistsError(f"{str(target)!r} exists and is not a pipeline folder; choose an empty or new folder")
        extra = {k: v for k, v in self.info.items() if k not in ("autoencoder_scaling_factor", "latent_shape", "vqvae_weights_sha256")}
        export_pipeline_folder(self.vqvae, self.unet, self.scheduler, target, extra, **self._text_parts())

    FOLDER_PARTS = ("vqvae", "unet", "scheduler")  # subfolders a saved folder must hold

    def _text_parts(self) -> dict:
        return {}

    @property
    def is_text_model(self) -> bool:
        return False

    @property
    def is_superres(self) -> bool:
        return False

    def _prompt_context(self, prompt, batch_size: int):
        """(context B x L x D, null context 1 x L x D) of a text model's prompts; None for other models."""
        if prompt is not None:
            what = "class-conditional (pass class_labels)" if self.num_classes else "unconditional"
            raise ValueError(f"prompt needs a text-to-image model; this one is {what}")
        return None

    def use_channels_last(self, enabled: bool = True) -> "VQLatentDiffusionPipeline":
        """Store conv weights NHWC (oneDNN / cuDNN pick faster kernels; results agree to ~1e-6, not bitwise)."""
        fmt = torch.channels_last if enabled else torch.contiguous_format
        self.unet.to(memory_format=fmt)
        self.vqvae.to(memory_format=fmt)
        return self

    def use_frozen_unet(self, enabled: bool = True) -> "VQLatentDiffusionPipeline":
        """Sample on CPU through a traced, frozen, oneDNN-optimised copy of the UNet (pipelines/fast.py).

        Same weights and maths; images agree with the eager UNet to ~1e-6 and stay bit-identical run to
        run. The copy is built on the first call for each batch shape (about a second for small models)
        and rebuilt when the UNet's weights change. No effect on GPU, under autocast, or with autograd.
        """
        self.freeze_unet = enabled
        if not enabled:
            self._frozen = None
        return self

    def frozen_unet_applies(self) -> bool:
        """Whether the frozen UNet can run here: on the CPU, in fp32, for a class or unconditional model."""
        return self.device.type == "cpu" and self.autocast_dtype in (None, torch.float32) and not self.is_text_model

    def choose_unet_path(self, option: str, unet_calls: int) -> str:
        """Set and return the UNet path ("eager" or "frozen") for a job of ``unet_calls`` UNet calls.

        ``option`` is one of UNET_PATHS: "auto" picks the frozen UNet where it applies and the job is long
        enough for its one-time build to pay off (``fast.FROZEN_MIN_UNET_CALLS``); "frozen" wherever it
        applies. Both paths give the same images to ~1e-6, so the choice changes speed, not the result.
        """
        from .fast import FROZEN_MIN_UNET_CALLS

        if option not in UNET_PATHS:
            raise ValueError(f"unknown UNet path {option!r}; choose one of {', '.join(UNET_PATHS)}")
        wanted = option == "frozen" or (option == "auto" and unet_calls >= FROZEN_MIN_UNET_CALLS)
        self.use_frozen_unet(wanted and self.frozen_unet_applies())
        return "frozen" if self.freeze_unet else "eager"

    def use_autocast(self, dtype: str | torch.dtype = "fp32") -> "VQLatentDiffusionPipeline":
        """Sample under fp16 / bf16 autocast (CUDA only; the weights stay fp32); "fp32" turns it off."""
        self.autocast_dtype = _autocast_dtype(dtype, self.device)
        return self

    @property
    def max_inference_steps(self) -> int:
        """The training schedule's timesteps: a sampler has no more timesteps to step through."""
        return int((self._schedule_config or self.scheduler.config)["num_train_timesteps"])

    def resolve_steps(self, num_inference_steps: int | None = None) -> int:
        """The denoising steps a call runs: ``num_inference_steps`` (1..max_inference_steps), else the
        model's default_steps, else 50."""
        if num_inference_steps is None:
            num_inference_steps = self.info.get("default_steps") or DEFAULT_STEPS
        steps = operator.index(num_inference_steps)  # TypeError for 2.5 or "10"
        if not 1 <= steps <= self.max_inference_steps:
            raise ValueError(f"num_inference_steps must be in 1..{self.max_inference_steps} (the timesteps of the "
                             f"training schedule), got {steps}")
        return steps

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of each decoded image."""
        return (int(self.vqvae.config.out_channels), *size_hw(self.vqvae.config.sample_size))

    @property
    def sampler_name(self) -> str:
        return type(self.scheduler).__name__

    def _sampling_unet(self):
        if not self.freeze_unet or not self.frozen_unet_applies():
            return self.unet
        from .fast import FrozenUNet

        if self._frozen is None or self._frozen.unet is not self.unet:
            self._frozen = FrozenUNet(self.unet)
        return self._frozen

    def _model_num_classes(self) -> int:
        return unet_num_classes(self.unet.config)

    def set_scheduler(self, name: str | None = None, **options) -> None:
        """Switch to ``ddim`` / ``ddpm`` / ``dpm`` / ``euler`` / ``unipc`` keeping the training schedule.

        ``name`` None: the model's ``default_scheduler``, else the kind of the scheduler it has now (so
        ``set_scheduler(timestep_spacing="trailing")`` changes one setting of the current sampler). Built
        from the scheduler config the pipeline was loaded with (not from the current scheduler, so
        switching back and forth loses nothing). The model's measured default sampler options (vqldm.json
        ``default_scheduler_options``) apply when ``name`` is its ``default_scheduler``; ``options``
        override them key by key. ValueError for an unknown name or option.
        """
        if name is None:
            name = self.info.get("default_scheduler") or scheduler_kind(self.scheduler)
            if name is None:
                raise ValueError(f"this pipeline's {type(self.scheduler).__name__} is not one vqldm builds; name a scheduler: "
                                 f"{', '.join(SCHEDULERS)}")
        if name == self.info.get("default_scheduler"):
            options = {**(self.info.get("default_scheduler_options") or {}), **options}
        self.scheduler = make_scheduler(name, self._schedule_config or self.scheduler.config, **options)

    # ------------------------------------------------------------------ building blocks
    def prepare_noise(self, batch_size: int, generator=None) -> torch.Tensor:
        """Initial N(0, I) latents, drawn on the CPU like ``LDMPipeline`` (same seed -> same images anywhere)."""
        c, h, w = unet_latent_shape(self.unet.config)
        return randn_tensor((batch_size, c, h, w), generator=generator).to(self.device)

    def encode_image(self, image) -> torch.Tensor:
        """Images -> scaled pre-quantization latents ``h * scaling_factor`` (the space the UNet works in)."""
        c = self.vqvae.config.in_channels
        x = to_image_tensor(image, c, size_hw(self.vqvae.config.sample_size), "image").to(self.device)
        return scale_latents(self.vqvae.encode(x).latents, self.vqvae)

    def decode_latents(self, latents: torch.Tensor, quantize: bool = True, decode_batch_size: int | None = None) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1]; quantize to the nearest codes first unless ``quantize=False``."""
        h = unscale_latents(latents, self.vqvae)
        n = decode_batch_size or h.shape[0]
        chunks = [self.vqvae.decode(part, force_not_quantize=not quantize).sample for part in h.split(n)]
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    def _autocast(self):
        if self.autocast_dtype in (None, torch.float32) or self.device.type != "cuda":
            return nullcontext()
        return torch.autocast("cuda", dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ sampling
    @torch.inference_mode()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        prompt: str | Sequence[str] | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        quantize: bool = True,
        latents: torch.Tensor | None = None,
        image=None,
        strength: float | None = None,
        mask_image=None,
        decode_batch_size: int | None = None,
        return_dict: bool = True,
    ):
        """Generate images.

        - ``class_labels``: one label or one per image (class-conditional models; None = unconditional via the
          null class). ``guidance_scale`` s: eps = eps_null + s (eps_class - eps_null); s = 1 is plain conditional.
          None: the model's measured ``default_guidance`` (vqldm.json) with class labels, else 1.
        - ``prompt``: text-to-image models: one prompt for every image or one per image (a list sets the batch
          size); guidance mixes in the empty prompt's prediction. No prompt samples unconditionally (the empty prompt).
        - ``latents``: initial noise ``B x C x h x w`` (else drawn from ``generator`` on the CPU, as LDMPipeline).
        - ``image`` (+ ``strength`` in [0, 1], default 0.6): SDEdit image-to-image — encode, noise to the step
          that ``strength`` selects, denoise from there (strength 0 = the reconstruction, 1 = a fresh sample).
        - ``mask_image`` with ``image``: inpainting; white/1 = regenerate, black/0 = keep (default strength 1).
        - ``quantize``: snap latents to the codebook before decoding (the VQ decoder was trained on codes).
        - ``output_type``: "pil", "np" (B x H x W x c in [0, 1]), "pt" (B x c x H x W in [0, 1]) or "latent".
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(map(repr, OUTPUT_TYPES))}, got {output_type!r}")
        if operator.index(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if latents is not None and batch_size not in (1, latents.shape[0]):
            raise ValueError(f"batch_size is {batch_size} but latents hold {latents.shape[0]} samples; pass one of them")
        if mask_image is not None and image is None:
            raise ValueError("mask_image needs image (the image whose masked part is regenerated)")
        if strength is not None and image is None:
            raise ValueError("strength needs image (it says how much of that image to re-noise)")
        if isinstance(prompt, (list, tuple)) and batch_size == 1 and latents is None:
            batch_size = len(prompt)  # a list of prompts sets the batch size
        guidance_scale = self._guidance_scale(guidance_scale, prompt if self.is_text_model else class_labels)
        steps = self.resolve_steps(num_inference_steps)
        known = None
        if image is not None:
            strength = (1.0 if mask_image is not None else 0.6) if strength is None else float(strength)
            if not 0.0 <= strength <= 1.0:
                raise ValueError(f"strength must be in [0, 1], got {strength}")
            with self._autocast():
                known = self.encode_image(image).float()  # B_img x C x h x w, scaled
            if batch_size == 1 and latents is None:
                batch_size = known.shape[0]  # a batch of init images sets the batch size
        if latents is not None:
            batch_size = latents.shape[0]
        if known is not None:
            if known.shape[0] == 1 and batch_size > 1:
                known = known.expand(batch_size, -1, -1, -1)
            if known.shape[0] != batch_size:
                raise ValueError(f"got {known.shape[0]} images for batch_size {batch_size}; pass one image or one per output")
        context = self._prompt_context(prompt, batch_size)
        labels = self._class_tensor(class_labels, batch_size)

        self.scheduler.set_timesteps(steps)
        timesteps = self.scheduler.timesteps
        noise = latents.to(self.device) if latents is not None else self.prepare_noise(batch_size, generator)

        after_step = None
        with self._autocast():
            if known is None:
                x = noise * self.scheduler.init_noise_sigma
            else:
                timesteps, x = self._noised_start(known, noise, timesteps, strength)
                if mask_image is not None:
                    after_step = self._inpaint_step(known, noise, timesteps, mask_image, batch_size)

            null = self.null_class
            x = denoise(
                self._sampling_unet(), self.scheduler, x, timesteps, class_labels=labels, guidance_scale=guidance_scale,
                null_class=null, generator=generator[0] if isinstance(generator, list) else generator, eta=eta,
                after_step=after_step, progress=self.progress_bar,
                **({"context": context[0], "null_context": context[1]} if context is not None else {}),
            )
            if output_type == "latent":
                images = x
            else:
                images = self.decode_latents(x, quantize=quantize, decode_batch_size=decode_batch_size)

        if output_type != "latent":
            images = to_output(images, output_type)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def _noised_start(self, known: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, strength: float):
        """SDEdit (Meng et al. 2022): keep the last ``strength`` fraction of the schedule and start from the
        known latents noised to its first timestep."""
        order = getattr(self.scheduler, "order", 1)
        n = len(timesteps) // order
        skip = n - min(int(round(n * strength)), n)
        timesteps = timesteps[skip * order:]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(skip * order)
        if len(timesteps) == 0:
            return timesteps, known.clone()
        if strength >= 1.0:  # a full-strength start is pure noise (add_noise at t_max would leak a trace of x0)
            return timesteps, noise * self.scheduler.init_noise_sigma
        t0 = timesteps[:1].repeat(known.shape[0])
        return timesteps, self.scheduler.add_noise(known, noise, t0)

    def _inpaint_step(self, known, noise, timesteps, mask_image, batch_size):
        """After each step, overwrite the kept region with the known latents noised to the next timestep, so
        the model only invents the masked region and blends it with its surroundings."""
        c, h, w = unet_latent_shape(self.unet.config)
        mask = to_mask_tensor(mask_image, size_hw(self.vqvae.config.sample_size))
        # a latent cell is kept only if every pixel it covers is kept (max-pool of the "regenerate" mask)
        repaint = F.adaptive_max_pool2d(mask, (h, w)).to(self.device)
        if repaint.shape[0] == 1 and batch_size > 1:
            repaint = repaint.expand(batch_size, -1, -1, -1)
        keep = 1.0 - repaint
        steps = list(timesteps)

        def after_step(i, t, latents):
            if i + 1 < len(steps):
                level = self.scheduler.add_noise(known, noise, steps[i + 1].repeat(latents.shape[0]))
            else:
                level = known
            return keep * level.to(latents.dtype) + repaint * latents

        return after_step

    def interpolate(self, seed_a: int, seed_b: int, frames: int = 8, **kwargs):
        """Images along the spherical path between the initial noise of two seeds; frame 0 is seed_a's
        image, the last frame seed_b's. Other arguments as in ``__call__`` (class_labels, steps, ...), but no
        ``batch_size``: the call makes ``frames`` images."""
        if frames < 2:
            raise ValueError(f"frames must be >= 2 (the two seeds' images), got {frames}")
        if "batch_size" in kwargs or "latents" in kwargs:
            raise TypeError("interpolate() makes `frames` images from the two seeds' noise; it takes no batch_size or latents")
        a = self.prepare_noise(1, torch.Generator().manual_seed(int(seed_a)))
        b = self.prepare_noise(1, torch.Generator().manual_seed(int(seed_b)))
        noise = torch.cat([slerp(a, b, i / (frames - 1)) for i in range(frames)])
        return self(latents=noise, **kwargs)


# ----------------------------------------------------------------------------- loading for users
def load_pipeline(path: str | os.PathLike | None = None, device: str | torch.device = "cpu", dtype: str | torch.dtype = "fp32",
                  channels_last: bool = True, freeze_unet: bool = False):
    """The pipeline at ``path`` (None: the model shipped in ``pipelines/default_model``) on ``device``
    (ValueError for a device this machine lacks; ModelFolderError for a folder that cannot be loaded).

    ``dtype`` fp16/bf16 turns on autocast on CUDA; weights stay fp32 and CPU runs stay fp32.
    ``channels_last`` (default on) stores conv weights NHWC; it changes images by ~4e-6, so compare
    bitwise with LDMPipeline only with it off (docs/results.md: no gain at the widths measured there).
    ``freeze_unet`` (CPU fp32 only) samples through a frozen TorchScript copy of the UNet
    (``VQLatentDiffusionPipeline.use_frozen_unet``); images agree with the eager UNet to ~1e-6. Building
    it costs about half a second per batch shape, so it pays off over a few hundred UNet calls
    (evaluation, serving), not for one grid; ``pipe.choose_unet_path("auto", unet_calls)`` decides by the
    job's size, as ``vqldm generate`` does.
    """
    device = torch_device(device)
    dtype = _autocast_dtype(dtype, device)  # checked before the (slower) load
    if path is None:
        folder = DEFAULT_MODEL_DIR
        if not (folder / "model_index.json").is_file() or not any(folder.glob("*/*.safetensors")):
            raise ModelFolderError(
                "the shipped model is missing from this install (pipelines/default_model has no weights); "
                "pass a pipeline folder or reinstall vqldm"
            )
    else:
        folder = Path(path)
    from diffusers.utils import logging as diffusers_logging

    was_enabled = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # no "Loading pipeline components" bar on the user's terminal
    try:
        cls = pipeline_class(folder)
        if cls is VQLatentDiffusionPipeline:
            pipe = cls.from_pretrained(folder)
        else:  # a text model: transformers loads its encoder (quietly too)
            from ..text.encoders import quiet_transformers

            with quiet_transformers():
                pipe = cls.from_pretrained(folder)
    finally:
        if was_enabled:
            diffusers_logging.enable_progress_bar()
    pipe.to(device)
    if channels_last:
        pipe.use_channels_last()
    pipe.use_frozen_unet(freeze_unet)
    pipe.autocast_dtype = dtype
    return pipe


def pipeline_class(folder: str | os.PathLike):
    """The vqldm pipeline class for a pipeline folder: text-to-image when its model_index.json names diffusers'
    LDMTextToImagePipeline, else VQLatentDiffusionPipeline (a run folder's pipeline/ is looked into)."""
    import json

    from ..diffusion.export import SUPERRES_PIPELINE_CLASS_NAME, TEXT_PIPELINE_CLASS_NAME

    path = Path(folder)
    index = path / "model_index.json" if (path / "model_index.json").is_file() else path / "pipeline" / "model_index.json"
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        name = None  # from_pretrained says what is wrong with the folder
    if name == TEXT_PIPELINE_CLASS_NAME:
        from .text_pipeline import VQTextToImagePipeline

        return VQTextToImagePipeline
    if name == SUPERRES_PIPELINE_CLASS_NAME:
        from .superres_pipeline import VQSuperResolutionPipeline

        return VQSuperResolutionPipeline
    return VQLatentDiffusionPipeline


def _autocast_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``dtype`` ("fp32" / "fp16" / "bf16" or a torch dtype) as the autocast dtype; half precision is a CUDA feature."""
    name = dtype if isinstance(dtype, str) else next((k for k, v in DTYPES.items() if v == dtype), None)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if name != "fp32" and device.type != "cuda":
        raise ValueError(f"dtype {name!r} (autocast) is for CUDA GPUs; use 'fp32' on {device.type}")
    return DTYPES[name]
