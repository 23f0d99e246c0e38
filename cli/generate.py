"""``vqldm generate``: sample images from a pipeline folder (or the model shipped with vqldm).

    vqldm generate --out grid.png                          # the shipped Fashion-MNIST model, a grid
    vqldm generate --class 7 --guidance 3 --out sneakers/   # one PNG per image
    vqldm generate --model runs/diffusion/pipeline --scheduler dpm --steps 20 --num-images 64
    vqldm generate --init-image shoe.png --strength 0.5     # image-to-image (SDEdit)
    vqldm generate --init-image shoe.png --mask mask.png    # inpaint the white part of the mask
    vqldm generate --seed 1 --interpolate 2 --frames 8      # walk between two seeds' noise

The same arguments give the same images (the noise is drawn on the CPU from one generator seeded with
``--seed``, consumed batch after batch; change ``--batch-size`` and the later images change).

Arguments are checked once, in three rounds, each before anything costly: the values as they are parsed
(``argparse`` types and choices), their combinations and the output path (before the model loads), then
what depends on the model (classes, steps, kind-specific options, the disk space the images need; before
the output folder is created and any image is sampled). The library below is called only with valid
arguments and speaks Python; only this file names ``--flags``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..pipelines.sampler import load_sampler
from ..plumbing.errors import UserError
from ..plumbing.runs import progress_bar


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..pipelines.fast import FROZEN_MIN_UNET_CALLS, UNET_PATHS
    from ..pipelines.pipeline import DTYPES
    from ..pipelines.schedulers import SCHEDULERS
    from .argtypes import device_name, key_value, positive_float, positive_int, probability, unit_float

    p = parser
    p.add_argument("--model", default=None, metavar="MODEL_DIR",
                   help="pipeline folder (model_index.json, vqvae/, unet/, scheduler/) or prior folder (prior/, vqvae/, "
                        "vqldm.json), or their run folder; default: the shipped model")
    p.add_argument("--num-images", type=positive_int, default=None, metavar="N",
                   help="how many images (default 16; with --prompt-file, one per prompt)")
    p.add_argument("--out", default="samples.png", metavar="PATH",
                   help="x.png / x.jpg / x.webp writes one grid; a folder path ending in / writes one file per image, "
                        "each batch as soon as it is decoded (default samples.png)")
    p.add_argument("--format", default="png", choices=["png", "jpg", "webp"],
                   help="file format of the images written to a folder --out (default png)")
    p.add_argument("--resume", action="store_true",
                   help="folder --out: keep the images an earlier run with the same settings wrote, and generate the rest")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--steps", type=positive_int, default=None, metavar="K",
                   help="denoising steps, at most the scheduler's training timesteps (a masked prior: decoding rounds, "
                        "at most its codes; default: the model's default_steps, else 50)")
    p.add_argument("--scheduler", default=None, type=str.lower, choices=tuple(SCHEDULERS), metavar="NAME",
                   help="ddim | ddpm | dpm (DPM-Solver++) | euler | unipc (default: the model's default_scheduler, else its own)")
    p.add_argument("--scheduler-option", dest="scheduler_options", action="append", type=key_value, default=None,
                   metavar="KEY=VALUE", help="a setting of the sampler, repeatable: timestep_spacing=trailing, solver_order=3 "
                   "(diffusers' scheduler config keys; on top of the model's default_scheduler_options)")
    p.add_argument("--class", dest="class_", default=None, metavar="C",
                   help="class index or name (class-conditional models; default: cycle through all classes)")
    p.add_argument("--prompt", default=None, metavar="TEXT", help="text-to-image models: the prompt of every image")
    p.add_argument("--prompt-file", default=None, metavar="FILE",
                   help="text-to-image models: one prompt per line (UTF-8); image i gets prompt i mod the number of prompts")
    p.add_argument("--guidance", type=positive_float, default=None, metavar="G",
                   help="classifier-free guidance scale (1 = none; class-conditional and text models; default: the model's "
                        "default_guidance in vqldm.json, else 1)")
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="B", help="images per UNet batch (default 16)")
    p.add_argument("--eta", type=unit_float, default=None, help="DDIM eta, 0..1 (latent diffusion; default 0: deterministic DDIM)")
    p.add_argument("--init-image", default=None, metavar="PATH", help="image-to-image: start from this image")
    p.add_argument("--strength", type=unit_float, default=None, metavar="S",
                   help="how much of the init image to re-noise, 0..1 (default 0.6; 1.0 with --mask)")
    p.add_argument("--mask", default=None, metavar="PATH",
                   help="inpainting (with --init-image): white = regenerate, black = keep")
    p.add_argument("--interpolate", type=int, default=None, metavar="SEED2",
                   help="interpolate the initial noise from --seed to SEED2 (spherically); writes --frames images")
    p.add_argument("--frames", type=positive_int, default=8, metavar="N", help="frames for --interpolate (default 8)")
    p.add_argument("--no-quantize", action="store_true", help="decode the latents without snapping them to the codebook")
    p.add_argument("--device", default="auto", type=device_name, help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES), metavar="fp32|fp16|bf16",
                   help="autocast precision on CUDA (default fp32)")
    p.add_argument("--decode-batch-size", type=positive_int, default=None, metavar="B",
                   help="images per decoder call (default: the whole batch)")
    p.add_argument("--unet-path", default="auto", choices=UNET_PATHS, metavar="auto|eager|frozen",
                   help="CPU fp32: frozen samples through a traced, frozen TorchScript UNet (~0.5-1 s to build per batch shape, "
                        "then faster steps; same images to ~1e-6); auto (default) picks it when the job makes at least "
                        f"{FROZEN_MIN_UNET_CALLS} UNet calls (batches x steps)")
    p.add_argument("--temperature", type=positive_float, default=None, metavar="T",
                   help="priors: sampling temperature of the codes (default: the model's, usually 1)")
    p.add_argument("--top-k", type=positive_int, default=None, metavar="K", help="priors: sample among the K most likely codes")
    p.add_argument("--top-p", type=probability, default=None, metavar="P", help="priors: nucleus sampling, 0 < P <= 1")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _check_args(args) -> None:
    """The combinations argparse cannot see, before loading any model, so mistakes fail in milliseconds."""
    if args.interpolate is not None and args.frames < 2:
        raise UserError(f"--frames must be >= 2 for --interpolate, got {args.frames}")
    if args.strength is not None and args.init_image is None:
        raise UserError("--strength needs --init-image")
    if args.mask is not None and args.init_image is None:
        raise UserError("--mask needs --init-image (the image whose white-masked part is regenerated)")
    if args.interpolate is not None and args.init_image is not None:
        raise UserError("--interpolate cannot be combined with --init-image; use one or the other")
    if args.prompt is not None and args.prompt_file is not None:
        raise UserError("--prompt and --prompt-file both give the prompts; use one of them")
    if (args.prompt is not None or args.prompt_file is not None) and args.class_ is not None:
        raise UserError("--class and --prompt are for different models (class-conditional, text-to-image); use one of them")
    if args.prompt is not None and not args.prompt.strip():
        raise UserError("--prompt is empty; give a prompt, or drop --prompt to sample unconditionally")
    args.prompts = _read_prompts(args.prompt_file) if args.prompt_file is not None else ([args.prompt] if args.prompt else None)
    args.num_images_given = args.num_images is not None
    if args.num_images is None:
        args.num_images = len(args.prompts) if args.prompt_file is not None else 16
    device = torch.device(_resolve_device(args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA GPU is available here; use --device cpu")
    if args.dtype != "fp32" and device.type != "cuda":
        raise UserError(f"--dtype {args.dtype} is for CUDA GPUs; use --dtype fp32 on {device.type}")


def _read_prompts(path: str) -> list[str]:
    """The prompts of a --prompt-file: one per line, none empty (a blank last line is allowed)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--prompt-file {path!r} not found; check the path") from None
    except UnicodeDecodeError:
        raise UserError(f"--prompt-file {path!r} is not UTF-8 text; save it as UTF-8, one prompt per line") from None
    except OSError as err:
        raise UserError(f"--prompt-file {path!r} cannot be read ({err.strerror}); check the path") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise UserError(f"--prompt-file {path!r} holds no prompts; write one prompt per line")
    empty = [n for n, line in enumerate(lines, 1) if not line.strip()]
    if empty:
        raise UserError(f"--prompt-file {path!r}: line {empty[0]} is empty ({len(empty)} empty line{'s' if len(empty) > 1 else ''}); "
                        f"write one prompt per line, with no blank lines between them")
    return [line.strip() for line in lines]


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


MAX_GRID_IMAGES = 1024  # a grid of more is unreadable (and a large image); write a folder instead
MANIFEST = "generate.json"  # in a folder --out: the settings, the batches done and the generator state after them
MIN_NAME_WIDTH = 4  # folder outputs are 0000.png, 0001.png, ...; wider when the count needs it, so names sort


def _name_width(count: int) -> int:
    """Digits of the file names of ``count`` images: every name the same width, so they sort in order."""
    return max(MIN_NAME_WIDTH, len(str(count - 1)))


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    return next(p for p in (path, *path.parents) if p.exists())


def _plan_output(args) -> dict:
    """Where and how images go, checked before any model is loaded and creating nothing: a grid file (its
    format from the suffix, at most MAX_GRID_IMAGES images) or a folder of files; the target must be writable."""
    from ..plumbing.images import IMAGE_FORMATS
    from ..plumbing.runs import check_writable_target

    path = Path(args.out)
    folder = args.out.endswith(("/", "\\")) or path.is_dir()
    n = args.frames if args.interpolate is not None else args.num_images
    if folder:
        check_writable_target(path, "--out")
        _probe_write(path)
        return {"folder": path, "suffix": "." + args.format, "count": n}
    if path.suffix.lower() not in IMAGE_FORMATS:
        raise UserError(f"--out {args.out!r}: a grid file must end in .png, .jpg or .webp; or pass a folder path ending in /")
    if n > MAX_GRID_IMAGES:
        raise UserError(f"{n} images do not fit one grid (at most {MAX_GRID_IMAGES}); write them to a folder: --out {path.with_suffix('')}/")
    if args.resume:
        raise UserError("--resume continues a folder of images: pass a folder --out (ending in /)")
    check_writable_target(path.parent, "--out")
    _probe_write(path.parent)
    return {"folder": None, "file": path, "count": n}


def _probe_write(target: Path) -> None:
    """A real write probe in ``target`` or, where it does not exist yet, its nearest existing ancestor:
    permission bits do not tell every refusal (read-only mounts, /proc, quotas). Leaves nothing behind."""
    where = _existing_ancestor(target)
    try:
        tempfile.TemporaryFile(dir=where).close()
    except OSError as err:
        raise UserError(f"cannot write to {str(where)!r} ({err.strerror}); choose a writable --out") from None


def _make_output(plan: dict) -> None:
    """Create the output folder, once every argument has been checked and before the first image."""
    from ..plumbing.checkpoint import ensure_writable_dir

    ensure_writable_dir(plan["folder"] if plan["folder"] is not None else plan["file"].parent)


def _format_bytes(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000


def _bytes_per_image(image_shape: tuple[int, int, int], where: Path) -> int:
    """The most one image file takes on the disk holding ``where``: raw pixels + 10% + 1 kB, in whole file-system
    blocks. That bounds the worst case, incompressible pixels, of each format (PNG stores them plus a filter
    byte per row and chunk headers; JPEG q95 and lossless WebP add their headers: noise at 8x8 to 256x256
    measured at most raw + 0.35 kB)."""
    c, h, w = image_shape
    block = (os.statvfs(where).f_frsize if hasattr(os, "statvfs") else 0) or 4096
    return math.ceil((c * h * w * 1.1 + 1024) / block) * block


def _check_free_space(folder: Path, image_shape: tuple[int, int, int], count: int) -> None:
    """Refuse a folder run the disk cannot hold, before its first image (``count``: the images still to write)."""
    where = _existing_ancestor(folder)
    per_image = _bytes_per_image(image_shape, where)
    need, free = count * per_image, shutil.disk_usage(where).free
    if need > free:
        c, h, w = image_shape
        raise UserError(f"{count} images of {w}x{h}x{c} need about {_format_bytes(need)} in {str(folder)!r} (up to "
                        f"{_format_bytes(per_image)} each) but only {_format_bytes(free)} is free there; free disk space, "
                        f"pass fewer --num-images, or choose another --out")


def _fingerprint(model: str | None) -> str:
    """Identity of the model folder for --resume: its weights files (names, sizes, modification times) and vqldm.json."""
    import hashlib

    from ..pipelines.default_model import DEFAULT_MODEL_DIR

    root = Path(model) if model else DEFAULT_MODEL_DIR
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and (p.suffix == ".safetensors" or p.name.endswith(".json")):
            st = p.stat()
            h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _settings(args) -> dict:
    """What decides the images (their count excepted): --resume continues only a run with these settings.
    --unet-path is not one of them: the eager and frozen UNets give the same images to ~1e-6."""
    keys = ("seed", "steps", "scheduler", "class_", "prompts", "guidance", "batch_size", "eta", "init_image", "strength", "mask",
            "no_quantize", "device", "dtype", "temperature", "top_k", "top_p", "format")
    return {"model": str(Path(args.model).resolve()) if args.model else "shipped", "model_fingerprint": _fingerprint(args.model),
            **{k: getattr(args, k) for k in keys},
            **({"scheduler_options": dict(args.scheduler_options)} if args.scheduler_options else {})}


MANIFEST_KEYS = ("settings", "batches_done", "images_done", "name_width", "generator_state")


def _resume_point(folder: Path, settings: dict, resume: bool, suffix: str, count: int) -> tuple[int, bytes | None, int]:
    """(batches already written, generator state after them, digits of the file names) for --resume;
    (0, None, the width ``count`` images need) for a fresh run."""
    import base64
    import json

    path = folder / MANIFEST
    if not resume or not path.is_file():
        return 0, None, _name_width(count)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{str(path)!r} is not readable JSON ({err}); delete it to start again") from None
    lacking = [k for k in MANIFEST_KEYS if k not in manifest]
    if lacking:
        raise UserError(f"{str(path)!r} has no {', '.join(lacking)} (not written by this vqldm's generate); "
                        f"drop --resume to start again")
    before = manifest["settings"]
    if before != settings:
        diff = sorted(k for k in settings.keys() | before.keys() if before.get(k) != settings.get(k))
        raise UserError(f"{folder} holds images made with other settings ({', '.join(diff)} {'differs' if len(diff) == 1 else 'differ'}); "
                        f"use the same settings, another --out, or drop --resume to start again")
    width = int(manifest["name_width"])
    if _name_width(count) > width:
        raise UserError(f"--num-images {count} needs {_name_width(count)}-digit file names but {folder} holds {width}-digit "
                        f"ones ({0:0{width}d}{suffix}, ...); resume with --num-images {10 ** width} or fewer, or choose another --out")
    missing = [i for i in range(int(manifest["images_done"])) if not (folder / f"{i:0{width}d}{suffix}").is_file()]
    if missing:
        raise UserError(f"{folder} lacks {len(missing)} of the images its {MANIFEST} says were written (first: {missing[0]:0{width}d}{suffix}); "
                        f"drop --resume to regenerate them all")
    return int(manifest["batches_done"]), base64.b64decode(manifest["generator_state"]), width


def _write_batch(images: torch.Tensor, folder: Path, first: int, suffix: str, width: int) -> None:
    """images: B x c x H x W in [0, 1] -> files first, first + 1, ... named with ``width`` digits (each written atomically)."""
    from PIL import Image

    from ..plumbing.images import images_to_uint8, save_image

    for i, a in enumerate(images_to_uint8(images * 2 - 1)):
        save_image(Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a), folder / f"{first + i:0{width}d}{suffix}")


def _write_manifest(folder: Path, settings: dict, batches_done: int, images_done: int, width: int,
                    generator: torch.Generator) -> None:
    import base64

    from ..plumbing.checkpoint import atomic_write_json

    atomic_write_json(folder / MANIFEST, {"settings": settings, "batches_done": batches_done, "images_done": images_done,
                                          "name_width": width,
                                          "generator_state": base64.b64encode(generator.get_state().numpy().tobytes()).decode()})


def _write_grid(images: torch.Tensor, path: Path, nrow: int | None = None) -> None:
    from ..plumbing.images import make_grid, save_image

    save_image(make_grid(images * 2 - 1, nrow=nrow), path)


def _check_against_model(pipe, args) -> int | None:
    """The arguments whose meaning depends on the model, worded as flags, before anything is written or
    sampled; returns the class index --class names (None: no --class)."""
    from ..pipelines.prior_pipeline import CodePriorPipeline

    what = repr(args.model) if args.model else "the shipped model"
    if isinstance(pipe, CodePriorPipeline):
        for flag, given in (("--scheduler", args.scheduler is not None), ("--scheduler-option", bool(args.scheduler_options)),
                            ("--interpolate", args.interpolate is not None),
                            ("--unet-path", args.unet_path != "auto"), ("--no-quantize", args.no_quantize),
                            ("--dtype", args.dtype != "fp32"), ("--strength", args.strength is not None),
                            ("--eta", args.eta is not None), ("--decode-batch-size", args.decode_batch_size is not None)):
            if given:
                raise UserError(f"{flag} is for latent diffusion pipelines; {what} is a prior over codes: drop {flag}")
        if pipe.kind == "autoregressive" and args.steps is not None:
            raise UserError(f"--steps does not apply to {what}: an autoregressive prior samples its "
                            f"{pipe.max_inference_steps} codes one per step; drop --steps")
        if pipe.kind == "autoregressive" and args.init_image is not None:
            raise UserError(f"inpainting (--init-image with --mask) needs a masked prior; {what} is autoregressive")
        if args.init_image is not None and args.mask is None:
            raise UserError("a prior regenerates the masked part of an image: pass --mask with --init-image")
        limit = f"the {pipe.max_inference_steps} codes {what} decodes (more steps than codes cannot each decide one)"
    else:
        for flag, given in (("--temperature", args.temperature), ("--top-k", args.top_k), ("--top-p", args.top_p)):
            if given is not None:
                raise UserError(f"{flag} is for priors over codes (`vqldm train-prior`); drop it for a latent diffusion model")
        limit = f"the {pipe.max_inference_steps} timesteps {what} was trained with"
    if args.steps is not None and args.steps > pipe.max_inference_steps:
        raise UserError(f"--steps {args.steps} is more than {limit}; pass --steps 1..{pipe.max_inference_steps}")
    flag = "--prompt-file" if args.prompt_file is not None else "--prompt"
    if getattr(pipe, "is_superres", False):
        if args.init_image is None:
            raise UserError(f"{what} is a super-resolution model: pass --init-image LOW_RES.png, the image to upscale "
                            f"{pipe.upscale_factor}x")
        for option, given in (("--mask", args.mask is not None), ("--strength", args.strength is not None),
                              ("--class", args.class_ is not None), (flag, args.prompts is not None),
                              ("--guidance", args.guidance not in (None, 1.0)), ("--interpolate", args.interpolate is not None)):
            if given:
                raise UserError(f"{option} does not apply to {what}, a super-resolution model (it upscales --init-image); drop {option}")
        return None
    if getattr(pipe, "is_text_model", False):
        if args.class_ is not None:
            raise UserError(f"{what} is text-to-image (it has no classes); pass --prompt TEXT instead of --class")
        if args.guidance is not None and args.guidance != 1.0 and args.prompts is None:
            raise UserError("--guidance pulls samples towards a prompt; pass --prompt TEXT (or --prompt-file) with it")
        return None
    if args.prompts is not None:
        kind = "class-conditional (use --class)" if pipe.num_classes else "unconditional"
        raise UserError(f"{flag} needs a text-to-image model; {what} is {kind}: drop {flag}")
    if not pipe.num_classes:
        if args.class_ is not None:
            raise UserError(f"{what} is unconditional (it has no classes); drop --class")
        if args.guidance is not None and args.guidance != 1.0:
            raise UserError(f"--guidance needs a class-conditional model; {what} is unconditional: drop --guidance")
        return None
    if args.class_ is None:
        return None
    try:
        return pipe.class_index(args.class_)
    except ValueError as err:
        raise UserError(f"--class {args.class_}: {err}") from None


def _configure(pipe, args) -> dict:
    """Set the model up for this job (latent diffusion: scheduler, UNet path, autocast); returns the keyword
    arguments of its call that only its kind takes."""
    from ..pipelines.prior_pipeline import CodePriorPipeline

    if isinstance(pipe, CodePriorPipeline):
        return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    set_sampler(pipe, args.scheduler, args.scheduler_options)
    pipe.use_autocast(args.dtype)
    _choose_unet_path(pipe, args)
    extra = {"eta": args.eta} if args.eta is not None else {}
    return {"quantize": not args.no_quantize, "decode_batch_size": args.decode_batch_size, **extra}


def set_sampler(pipe, name: str | None, options: list[tuple[str, object]] | None) -> None:
    """--scheduler and --scheduler-option on a latent diffusion pipeline (neither given: the model's default,
    set when it loaded); a bad option is a UserError naming the flag."""
    if not name and not options:
        return
    try:
        pipe.set_scheduler(name, **dict(options or ()))
    except ValueError as err:
        given = " ".join(f"--scheduler-option {k}={v}" for k, v in options or ())
        raise UserError(f"{given or '--scheduler ' + str(name)}: {err}") from None


def _choose_unet_path(pipe, args) -> None:
    """--unet-path, told in one line where it is not the obvious one. auto counts the UNet calls of the whole
    job, not of what --resume leaves of it, so a resumed run samples as the uninterrupted one did."""
    batches = 1 if args.interpolate is not None else math.ceil(args.num_images / args.batch_size)
    calls = batches * pipe.resolve_steps(args.steps)
    path = pipe.choose_unet_path(args.unet_path, calls)
    if path == "frozen" and args.unet_path == "auto":
        tqdm.write(f"sampling through the frozen CPU UNet ({calls} UNet calls; --unet-path eager to opt out)", file=sys.stderr)
    elif path == "eager" and args.unet_path == "frozen":
        tqdm.write(f"--unet-path frozen applies to CPU fp32 sampling; running the UNet eagerly on {pipe.device.type}", file=sys.stderr)


def main(args) -> int:
    _check_args(args)
    plan = _plan_output(args)
    init_image = _open_image(args.init_image, "--init-image") if args.init_image else None
    mask = _open_image(args.mask, "--mask") if args.mask else None
    folder, suffix = plan["folder"], plan.get("suffix", "")
    settings = _settings(args) if folder is not None else None
    done_batches, state, width = _resume_point(folder, settings, args.resume, suffix, plan["count"]) if folder is not None \
        else (0, None, 0)
    first = 0 if args.interpolate is not None else min(done_batches * args.batch_size, args.num_images)

    start = time.perf_counter()
    pipe = load_sampler(args.model, device=_resolve_device(args.device))  # ModelFolderError: one line (cli/main.py)
    label = _check_against_model(pipe, args)
    if getattr(pipe, "is_superres", False) and not args.num_images_given:
        args.num_images = plan["count"] = 1  # upscale the image once unless asked for several samples
    specific = _configure(pipe, args)  # a bad --scheduler-option fails here, before anything is written
    if folder is not None:
        _check_free_space(folder, pipe.image_shape, plan["count"] - first)
    _make_output(plan)
    if args.resume and state is None:
        tqdm.write(f"nothing to resume in {folder} (no {MANIFEST}); starting from the first image", file=sys.stderr)

    prompts = args.prompts
    if prompts is not None:
        prompts_for = lambda lo, hi: [prompts[i % len(prompts)] for i in range(lo, hi)]  # noqa: E731
    else:
        prompts_for = lambda lo, hi: None  # noqa: E731
    if label is not None:
        labels_for = lambda lo, hi: [label] * (hi - lo)  # noqa: E731
    elif pipe.num_classes:
        labels_for = lambda lo, hi: [i % pipe.num_classes for i in range(lo, hi)]  # noqa: E731
    else:
        labels_for = lambda lo, hi: None  # noqa: E731

    common = dict(guidance_scale=args.guidance, num_inference_steps=args.steps, output_type="pt", **specific)
    if args.interpolate is not None:
        pipe.set_progress_bar_config(disable=args.no_progress, desc="interpolating")
        labels = labels_for(0, 1)
        text = {"prompt": prompts[0]} if prompts else {}
        images = pipe.interpolate(args.seed, args.interpolate, frames=args.frames,
                                  class_labels=labels[0] if labels else None, **text, **common).images.cpu()
        if folder is not None:
            _write_batch(images, folder, 0, suffix, width)
            where = f"{images.shape[0]} images in {folder}/"
        else:
            _write_grid(images, plan["file"], nrow=args.frames)
            where = str(plan["file"])
        n_made = images.shape[0]
    else:
        # One generator, consumed batch after batch: the same arguments give the same images. In a folder,
        # each batch is written as soon as it is decoded, then the manifest records the generator state after
        # it, so a run stopped at any point keeps every finished image and --resume continues exactly.
        generator = torch.Generator().manual_seed(args.seed)
        if state is not None:
            generator.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
        n, b = args.num_images, args.batch_size
        pipe.set_progress_bar_config(disable=True)
        bar = progress_bar(n, first, "generate", enabled=not args.no_progress, unit="image")
        chunks = []
        for k, lo in enumerate(range(first, n, b), start=done_batches):
            hi = min(lo + b, n)
            extra = {"strength": args.strength} if args.strength is not None else {}
            if prompts is not None:
                extra["prompt"] = prompts_for(lo, hi)
            out = pipe(batch_size=hi - lo, class_labels=labels_for(lo, hi), generator=generator,
                       image=init_image, mask_image=mask, **extra, **common)
            images = out.images.cpu()
            if folder is not None:
                _write_batch(images, folder, lo, suffix, width)
                _write_manifest(folder, settings, k + 1, hi, width, generator)
            else:
                chunks.append(images)
            bar.update(hi - lo)
        bar.close()
        n_made = n - first
        if folder is not None:
            where = f"{n_made} images in {folder}/" + (f" (resumed after image {first:0{width}d}; {n} in all)" if first else "")
        else:
            _write_grid(torch.cat(chunks), plan["file"])
            where = str(plan["file"])
    seconds = time.perf_counter() - start
    if n_made == 0:
        print(f"nothing to do: all {args.num_images} images are already in {folder}/")
    else:
        note = ""
        if (pipe.num_classes or prompts is not None) and args.guidance is None:
            note = f"; guidance {pipe.default_guidance:g}, the model's default; --guidance G to change"
        elif getattr(pipe, "is_text_model", False) and prompts is None:
            note = "; no --prompt: unconditional samples (the empty prompt)"
        print(f"wrote {where} ({n_made} images, {seconds:.1f} s, {seconds / n_made:.2f} s/image{note})")
    return 0
