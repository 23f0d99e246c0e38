"""``vqldm generate``: sample images from a pipeline folder (or the model shipped with vqldm).

    vqldm generate --out grid.png                          # the shipped Fashion-MNIST model, a grid
    vqldm generate --class 7 --guidance 3 --out sneakers/   # one PNG per image
    vqldm generate --model runs/diffusion/pipeline --scheduler dpm --steps 20 --num-images 64
    vqldm generate --init-image shoe.png --strength 0.5     # image-to-image (SDEdit)
    vqldm generate --init-image shoe.png --mask mask.png    # inpaint the white part of the mask
    vqldm generate --seed 1 --interpolate 2 --frames 8      # walk between two seeds' noise

The same arguments give the same images (the noise is drawn on the CPU from one generator seeded with
``--seed``, consumed batch after batch; change ``--batch-size`` and the later images change).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from ..plumbing.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--model", default=None, metavar="PIPELINE_DIR",
                   help="pipeline folder (model_index.json, vqvae/, unet/, scheduler/); default: the shipped model")
    p.add_argument("--num-images", type=int, default=16, metavar="N", help="how many images (default 16)")
    p.add_argument("--out", default="samples.png", metavar="PATH",
                   help="x.png writes one grid; a folder path ending in / writes one PNG per image (default samples.png)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--steps", type=int, default=None, metavar="K",
                   help="denoising steps (default: the model's default_steps, else 50)")
    p.add_argument("--scheduler", default=None, metavar="NAME",
                   help="ddim | ddpm | dpm (DPM-Solver++) | euler | unipc (default: the model's default_scheduler, else its own)")
    p.add_argument("--class", dest="class_", default=None, metavar="C",
                   help="class index or name (class-conditional models; default: cycle through all classes)")
    p.add_argument("--guidance", type=float, default=None, metavar="G",
                   help="classifier-free guidance scale (1 = none; class-conditional models only; default: the model's "
                        "default_guidance in vqldm.json, else 1)")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="images per UNet batch (default 16)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic DDIM)")
    p.add_argument("--init-image", default=None, metavar="PATH", help="image-to-image: start from this image")
    p.add_argument("--strength", type=float, default=None, metavar="S",
                   help="how much of the init image to re-noise, 0..1 (default 0.6; 1.0 with --mask)")
    p.add_argument("--mask", default=None, metavar="PATH",
                   help="inpainting (with --init-image): white = regenerate, black = keep")
    p.add_argument("--interpolate", type=int, default=None, metavar="SEED2",
                   help="interpolate the initial noise from --seed to SEED2 (spherically); writes --frames images")
    p.add_argument("--frames", type=int, default=8, metavar="N", help="frames for --interpolate (default 8)")
    p.add_argument("--no-quantize", action="store_true", help="decode the latents without snapping them to the codebook")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    p.add_argument("--dtype", default="fp32", metavar="fp32|fp16|bf16", help="autocast precision on CUDA (default fp32)")
    p.add_argument("--decode-batch-size", type=int, default=None, metavar="B",
                   help="images per decoder call (default: the whole batch)")
    p.add_argument("--freeze-unet", action="store_true",
                   help="CPU: sample through a frozen TorchScript UNet (~1 s to build, then faster steps; pays off over many batches)")
    p.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="priors: sampling temperature of the codes (default: the model's, usually 1)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="priors: sample among the K most likely codes")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="priors: nucleus sampling, 0 < P <= 1")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _check_args(args) -> None:
    """Cheap checks before loading any model, so mistakes fail in milliseconds."""
    from .pipeline import DTYPES
    from .schedulers import SCHEDULERS

    if args.scheduler is not None and args.scheduler.lower() not in SCHEDULERS:
        raise UserError(f"unknown scheduler {args.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if args.dtype not in DTYPES:
        raise UserError(f"unknown --dtype {args.dtype!r}; choose one of {', '.join(DTYPES)}")
    for name in ("num_images", "batch_size", "steps", "decode_batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.interpolate is not None and args.frames < 2:
        raise UserError(f"--frames must be >= 2 for --interpolate, got {args.frames}")
    if args.strength is not None and not 0.0 <= args.strength <= 1.0:
        raise UserError(f"--strength must be between 0 and 1, got {args.strength}")
    if args.strength is not None and args.init_image is None:
        raise UserError("--strength needs --init-image")
    if args.mask is not None and args.init_image is None:
        raise UserError("--mask needs --init-image (the image whose white-masked part is regenerated)")
    if args.interpolate is not None and args.init_image is not None:
        raise UserError("--interpolate cannot be combined with --init-image; use one or the other")
    for name in ("guidance", "strength", "eta", "temperature", "top_p"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    if args.guidance is not None and args.guidance <= 0:
        raise UserError(f"--guidance must be > 0, got {args.guidance}")
    if args.temperature is not None and args.temperature <= 0:
        raise UserError(f"--temperature must be > 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")


def _open_image(path: str, what: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except FileNotFoundError:
        raise UserError(f"{what} {path!r} not found; check the path") from None
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{what} {path!r} is not a readable image ({err}); pass a PNG or JPEG") from None


def _resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _write(images: torch.Tensor, out: str, nrow: int | None = None) -> str:
    """images: B x c x H x W in [0, 1]. A folder path (trailing / or existing folder) gets one PNG per image."""
    from PIL import Image

    from ..plumbing.images import images_to_uint8, make_grid, save_png

    path = Path(out)
    as_folder = out.endswith(("/", "\\")) or path.is_dir()
    signed = images * 2 - 1  # the [-1, 1] convention of autoencoder.runtime
    if as_folder:
        arr = images_to_uint8(signed)
        for i, a in enumerate(arr):
            save_png(Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a), path / f"{i:04d}.png")
        return f"{len(arr)} PNGs in {path}/"
    if path.suffix.lower() != ".png":
        raise UserError(f"--out {out!r} must end in .png (a grid) or / (a folder of PNGs)")
    save_png(make_grid(signed, nrow=nrow), path)
    return str(path)


def _load(args):
    """The model at --model: a latent diffusion pipeline, or a code prior (vqldm.json says which)."""
    from .prior_pipeline import is_prior_folder, load_prior_pipeline

    if is_prior_folder(args.model):
        for flag, given in (("--scheduler", args.scheduler), ("--interpolate", args.interpolate is not None),
                            ("--freeze-unet", args.freeze_unet), ("--no-quantize", args.no_quantize),
                            ("--dtype", args.dtype != "fp32"), ("--strength", args.strength is not None)):
            if given:
                raise UserError(f"{flag} is for latent diffusion pipelines; {args.model!r} is a prior over codes: drop {flag}")
        return load_prior_pipeline(args.model, device=_resolve_device(args.device)), {
            "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    from .pipeline import load_pipeline

    for flag, given in (("--temperature", args.temperature), ("--top-k", args.top_k), ("--top-p", args.top_p)):
        if given is not None:
            raise UserError(f"{flag} is for priors over codes (`vqldm train-prior`); drop it for a latent diffusion model")
    pipe = load_pipeline(args.model, device=_resolve_device(args.device), dtype=args.dtype, freeze_unet=args.freeze_unet)
    scheduler = args.scheduler or pipe.info.get("default_scheduler")
    if scheduler:
        pipe.set_scheduler(scheduler)
    return pipe, {"eta": args.eta, "quantize": not args.no_quantize, "decode_batch_size": args.decode_batch_size}


def main(args) -> int:
    _check_args(args)
    init_image = _open_image(args.init_image, "--init-image") if args.init_image else None
    mask = _open_image(args.mask, "--mask") if args.mask else None

    start = time.perf_counter()
    pipe, specific = _load(args)

    if args.class_ is not None:
        label = pipe.class_index(args.class_)
        labels_for = lambda lo, hi: [label] * (hi - lo)  # noqa: E731
    elif pipe.num_classes:
        labels_for = lambda lo, hi: [i % pipe.num_classes for i in range(lo, hi)]  # noqa: E731
    else:
        labels_for = lambda lo, hi: None  # noqa: E731

    common = dict(guidance_scale=args.guidance, num_inference_steps=args.steps, output_type="pt", **specific)
    nrow = None
    if args.interpolate is not None:
        pipe.set_progress_bar_config(disable=args.no_progress, desc="interpolating")
        labels = labels_for(0, 1)
        images = pipe.interpolate(args.seed, args.interpolate, frames=args.frames,
                                  class_labels=labels[0] if labels else None, **common).images
        nrow = args.frames
    else:
        generator = torch.Generator().manual_seed(args.seed)
        chunks, n, b = [], args.num_images, args.batch_size
        batches = (n + b - 1) // b
        for k, lo in enumerate(range(0, n, b)):
            hi = min(lo + b, n)
            pipe.set_progress_bar_config(disable=args.no_progress, desc=f"batch {k + 1}/{batches}")
            extra = {"strength": args.strength} if args.strength is not None else {}
            out = pipe(batch_size=hi - lo, class_labels=labels_for(lo, hi), generator=generator,
                       image=init_image, mask_image=mask, **extra, **common)
            chunks.append(out.images.cpu())
        images = torch.cat(chunks)
    where = _write(images, args.out, nrow=nrow)
    seconds = time.perf_counter() - start
    print(f"wrote {where} ({images.shape[0]} images, {seconds:.1f} s, {seconds / images.shape[0]:.2f} s/image)")
    return 0
