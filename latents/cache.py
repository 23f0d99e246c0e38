"""The latent cache: the dataset encoded once through the frozen autoencoder, reused by every run.

What is stored is what the UNet trains on: the *pre-quantization* latents h = ``vqvae.encode(x).latents``
times ``scaling_factor`` (LDM convention, DESIGN.md), as N x C x h x w tensors, plus the labels (int64,
-1 = none). With ``hflip`` a second tensor holds the latents of the horizontally flipped images (the
encoder is not flip-equivariant, so the flip is applied to the image, not to the latent). Data read with
captions (``data.captions``) keeps them beside the latents, one per image (a mirrored view has its
image's caption), as :class:`~vqldm.data.captions.PackedStrings` tensors.

Layout (one folder per key, so runs with different autoencoders or data never overwrite each other)::

    <root>/<key[:16]>/index.json             format, key, shapes, class names
    <root>/<key[:16]>/train.safetensors      "latents" [, "latents_hflip"], "labels" [, "caption_bytes", "caption_ends"]
                                             [, "low_res" [, "low_res_hflip"]]  (super-resolution inputs)
    <root>/<key[:16]>/holdout.safetensors    "latents", "labels" [, captions]   (for evaluation / FID)
    <root>/<key[:16]>/codes.safetensors      the nearest-code indices of the same latents (priors)

Building streams: images are decoded by DataLoader workers a batch at a time, encoded, and written
into their rows of a file laid out in advance (:mod:`.tensorfile`), so memory does not grow with the
dataset. Reading maps the files into memory: a batch reads only its own rows, and the processes of a
distributed run share the pages.

The key is a hash of the vqvae (config + every weight), the splits' fingerprints (for a folder: its
index of paths, sizes and mtimes, never the pixels; and the captions, where read), the image geometry,
``hflip`` and the stored dtype: anything that changes the latents changes the key, and a cache is reused only when the key in
its ``index.json`` matches. Folders are built under a temporary name and renamed into place, so a
half-written cache is never read. In a distributed run the main process builds it while the others
wait at a barrier, then every process maps it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from diffusers import VQModel

from ..autoencoder.model import code_grid, nearest_codes, scale_latents, unscale_latents
from ..data.captions import PackedStrings
from ..data.splits import Datasets, ImageSplit
from ..plumbing.checkpoint import AtomicDir, weights_sha256
from ..plumbing.errors import UserError
from ..plumbing.tensorfile import TensorFileWriter, mmap_tensors


@dataclass
class CacheConfig:
    """The latent cache: the dataset encoded once through the autoencoder (this module)."""

    folder: str | None = None  # default: <autoencoder run>/latent_cache if writable, else <out>/latent_cache
    hflip: bool = False  # also store the latents of horizontally flipped images (a second view)
    # also store each image downsampled to the latent grid (antialiased bicubic, float16): the input of a
    # super-resolution model (set by train-diffusion with model.superresolution)
    low_res: bool = False
    encode_batch_size: int = 256
    holdout_max_images: int | None = None  # encode at most this many held-out images (None = all)
    dtype: Literal["float32", "float16"] = "float32"  # float16 halves disk and memory for large latents

    def __post_init__(self):
        if self.encode_batch_size < 1:
            raise ValueError("cache.encode_batch_size must be >= 1")


FORMAT = "vqldm-latent-cache"
VERSION = 2  # 2: one memory-mapped file per split, codes as int32


def gather_views(items: torch.Tensor, flipped: torch.Tensor | None, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """Items ``indices`` of a split stored as N originals (+ N mirrored views: items N .. 2N-1) -> (the
    gathered rows, their source rows 0 .. N-1)."""
    idx = torch.as_tensor(indices, dtype=torch.long)
    n = items.shape[0]
    src = idx % n
    out = items[src].clone()
    if flipped is not None:
        mirrored = idx >= n
        if mirrored.any():
            out[mirrored] = flipped[src[mirrored]].to(out.dtype)
    return out, src


@dataclass
class CachedSplit:
    """One split of a cache: ``items`` N x ... (scaled latents, or code ids), ``labels`` N int64 (-1 = none),
    ``flipped`` the items of the mirrored images or None, ``captions`` one per image (N) or None. Item
    ``i`` is image ``i`` for ``i < N`` and the mirrored image ``i - N`` for ``N <= i < 2N``."""

    items: torch.Tensor
    labels: torch.Tensor
    flipped: torch.Tensor | None = None
    captions: PackedStrings | None = None
    low_res: torch.Tensor | None = None  # N x c x h x w images at the latent grid's size, in [-1, 1]
    low_res_flipped: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.items.shape[0] * (2 if self.flipped is not None else 1)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``indices`` (views included; float32 for latents, int64 for codes) and their labels."""
        out, src = gather_views(self.items, self.flipped, indices)
        return (out.float() if out.is_floating_point() else out.long()), self.labels[src]

    def rows(self, indices) -> torch.Tensor:
        """The image (row 0 .. N-1) each item of ``indices`` shows: a mirrored view is its image's row."""
        return torch.as_tensor(indices, dtype=torch.long) % self.items.shape[0]

    def low_res_batch(self, indices) -> torch.Tensor:
        """The low-resolution images of items ``indices`` (views included), float32 in [-1, 1]."""
        if self.low_res is None:
            raise ValueError("this cache holds no low-resolution images (built without cache.low_res)")
        return gather_views(self.low_res, self.low_res_flipped if self.flipped is not None else None, indices)[0].float()



class LatentSplit(CachedSplit):
    """Cached latents of one split: ``latents`` N x C x h x w, scaled pre-quantization latents."""

    @property
    def latents(self) -> torch.Tensor:
        return self.items


@dataclass
class LatentCache:
    folder: Path
    key: str
    train: LatentSplit
    holdout: LatentSplit
    class_names: list[str] = field(default_factory=list)
    scaling_factor: float = 1.0
    built: bool = False  # this call encoded the data (False: an existing cache was reused)
    seconds: float = 0.0  # time spent building or loading

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.latents.shape[1:])


# ----------------------------------------------------------------------------- keys
def vqvae_hash(vqvae: VQModel) -> str:
    """sha256 of the vqvae's config (public keys) and every weight, in name order."""
    h = hashlib.sha256()
    config = {k: v for k, v in dict(vqvae.config).items() if not k.startswith("_")}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(weights_sha256(vqvae).encode())
    return h.hexdigest()


def cache_key(vqvae: VQModel, datasets: Datasets, cfg: CacheConfig, image_size: int, channels: int, fit: str) -> str:
    """The identity of a cache: everything that changes the stored latents."""
    parts = {
        "format": FORMAT,
        "version": VERSION,
        "vqvae": vqvae_hash(vqvae),
        "train": datasets.train.fingerprint(),
        "holdout": datasets.holdout.fingerprint(),
        "image_size": image_size,
        "channels": channels,
        "fit": fit,
        "hflip": cfg.hflip,
        "dtype": cfg.dtype,
    }
    if datasets.train.captions is not None:  # only then: caches of data without captions keep their keys
        parts["captions"] = True
    if cfg.low_res:
        parts["low_res"] = True
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- encoding
@torch.inference_mode()
def encode_batch(vqvae: VQModel, x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """[-1, 1] images -> ``vqvae.encode(x).latents * scaling_factor``, float32 on the CPU."""
    return scale_latents(vqvae.encode(x.to(device)).latents.float(), vqvae).cpu()


@torch.inference_mode()
def encode_latents(vqvae: VQModel, data: ImageSplit, batch_size: int = 256, device: torch.device | str = "cpu",
                   hflip: bool = False, progress: bool = False, desc: str = "encoding latents") -> torch.Tensor:
    """N x C x h x w float32 latents of every image of a (small) split, mirrored first when ``hflip``, in
    order, in memory (the cache itself streams: :func:`build_latent_cache`)."""
    vqvae.eval()
    return torch.cat([encode_batch(vqvae, x.flip(-1) if hflip else x, device)
                      for x, _ in data.batches(batch_size, progress=progress, desc=desc)])


def downsample(x: torch.Tensor, size) -> torch.Tensor:
    """Images in [-1, 1] -> the same images at ``size`` (h, w): antialiased bicubic, clamped to [-1, 1]."""
    return torch.nn.functional.interpolate(x.float(), size=tuple(size), mode="bicubic", antialias=True,
                                           align_corners=False).clamp(-1, 1)


@torch.inference_mode()
def _encode_split(path: Path, vqvae: VQModel, data: ImageSplit, cfg: CacheConfig, device, progress: bool, desc: str,
                  hflip: bool, num_workers: int | None) -> tuple[int, ...]:
    """Stream one split into ``path``: read a batch (workers decode), encode it (and its mirror), write
    its rows. Returns the latent shape."""
    dtype = getattr(torch, cfg.dtype)
    n = len(data)
    captions = data.captions
    if captions is not None and len(captions) != n:
        raise ValueError(f"{len(captions)} captions for {n} images")
    writer = None
    start = 0
    try:
        for x, y in data.batches(cfg.encode_batch_size, progress=progress, desc=desc, num_workers=num_workers):
            h = encode_batch(vqvae, x, device)
            if writer is None:  # the shapes are known from the first batch: lay the file out
                specs = {"latents": (dtype, (n, *h.shape[1:])), "labels": (torch.int64, (n,))}
                if hflip:
                    specs["latents_hflip"] = (dtype, (n, *h.shape[1:]))
                if cfg.low_res:
                    low_shape = (n, x.shape[1], *h.shape[2:])
                    specs["low_res"] = (torch.float16, low_shape)
                    if hflip:
                        specs["low_res_hflip"] = (torch.float16, low_shape)
                if captions is not None:
                    specs["caption_bytes"] = (torch.uint8, (len(captions.blob),))
                    specs["caption_ends"] = (torch.int64, (n,))
                writer = TensorFileWriter(path, specs)
                if captions is not None:
                    writer.write("caption_bytes", 0, torch.from_numpy(np.ascontiguousarray(captions.blob)))
                    writer.write("caption_ends", 0, torch.from_numpy(np.ascontiguousarray(captions.ends)))
            writer.write("latents", start, h.to(dtype))
            writer.write("labels", start, y)
            if hflip:
                writer.write("latents_hflip", start, encode_batch(vqvae, x.flip(-1), device).to(dtype))
            if cfg.low_res:
                writer.write("low_res", start, downsample(x, h.shape[2:]).half())
                if hflip:
                    writer.write("low_res_hflip", start, downsample(x.flip(-1), h.shape[2:]).half())
            start += len(y)
        writer.close()
    except BaseException:
        if writer is not None:
            writer.__exit__(RuntimeError, None, None)
        raise
    return tuple(h.shape[1:])


def build_latent_cache(
    folder: str | os.PathLike,
    vqvae: VQModel,
    datasets: Datasets,
    cfg: CacheConfig,
    key: str,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
    progress: bool = True,
    num_workers: int | None = None,
) -> None:
    """Encode both splits, streaming, and write the cache folder atomically (temporary folder, then rename)."""
    folder = Path(folder)
    start = time.perf_counter()
    vqvae.eval()
    with AtomicDir(folder) as tmp:
        shape = _encode_split(tmp / "train.safetensors", vqvae, datasets.train, cfg, device, progress,
                              "encoding train latents", cfg.hflip, num_workers)
        _encode_split(tmp / "holdout.safetensors", vqvae, datasets.holdout, cfg, device, progress,
                      "encoding holdout latents", False, num_workers)
        index = {
            "format": FORMAT,
            "version": VERSION,
            "key": key,
            "latent_shape": list(shape),
            "dtype": cfg.dtype,
            "hflip": cfg.hflip,
            "captions": datasets.train.captions is not None,
            "scaling_factor": float(vqvae.config.scaling_factor),
            "class_names": list(datasets.train.class_names),
            "source": datasets.source,
            "splits": {"train": {"count": len(datasets.train)}, "holdout": {"count": len(datasets.holdout)}},
            "build_seconds": round(time.perf_counter() - start, 3),
        }
        (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    log(f"latent cache: encoded {len(datasets.train)} train + {len(datasets.holdout)} holdout images into {folder} "
        f"in {index['build_seconds']:.1f}s")


def read_index(folder: str | os.PathLike) -> dict | None:
    try:
        index = json.loads((Path(folder) / "index.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return index if isinstance(index, dict) and index.get("format") == FORMAT else None


def load_latent_cache(folder: str | os.PathLike, key: str | None = None) -> LatentCache:
    """Map a cache folder into memory; with ``key``, refuse a cache built for something else."""
    folder = Path(folder)
    start = time.perf_counter()
    index = read_index(folder)
    if index is None:
        raise UserError(f"{str(folder)!r} is not a latent cache (no valid index.json); delete it to rebuild")
    if key is not None and index.get("key") != key:
        raise UserError(f"latent cache {str(folder)!r} was built for another autoencoder or data; delete it to rebuild")

    def split(name: str) -> LatentSplit:
        tensors = mmap_tensors(folder / f"{name}.safetensors")
        captions = None
        if "caption_ends" in tensors:  # numpy views of the mapped pages: nothing is copied
            captions = PackedStrings(tensors["caption_bytes"].numpy(), tensors["caption_ends"].numpy())
        return LatentSplit(tensors["latents"], tensors["labels"], tensors.get("latents_hflip"), captions,
                           tensors.get("low_res"), tensors.get("low_res_hflip"))

    return LatentCache(
        folder=folder,
        key=index["key"],
        train=split("train"),
        holdout=split("holdout"),
        class_names=list(index.get("class_names", [])),
        scaling_factor=float(index["scaling_factor"]),
        seconds=time.perf_counter() - start,
    )


def cache_root(configured: str | None, autoencoder_run: Path | None, run_dir: Path) -> Path:
    """Where caches live: the configured folder, else beside the autoencoder run (shared by every model
    trained on it) when writable, else inside this run."""
    if configured:
        return Path(configured)
    if autoencoder_run is not None and os.access(autoencoder_run, os.W_OK):
        return Path(autoencoder_run) / "latent_cache"
    return Path(run_dir) / "latent_cache"


def prepare_latent_cache(
    root: str | os.PathLike,
    vqvae: VQModel,
    datasets: Datasets,
    cfg: CacheConfig,
    image_size: int,
    channels: int,
    fit: str,
    accelerator=None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    num_workers: int | None = None,
) -> LatentCache:
    """Reuse the cache under ``root`` whose key matches, or build it (main process only), then load it.

    With an ``accelerate.Accelerator``, the main process builds on its device while the others wait at
    ``wait_for_everyone``; afterwards every process reads the same folder (shared storage for multi-node).
    """
    if cfg.holdout_max_images is not None and len(datasets.holdout) > cfg.holdout_max_images:
        datasets = Datasets(datasets.train, datasets.holdout.subset(cfg.holdout_max_images), datasets.skipped, datasets.source)
    key = cache_key(vqvae, datasets, cfg, image_size, channels, fit)
    folder = Path(root) / key[:16]
    is_main = accelerator is None or accelerator.is_main_process
    built = False
    start = time.perf_counter()
    if is_main:
        index = read_index(folder)
        if index is None or index.get("key") != key:
            device = accelerator.device if accelerator is not None else next(vqvae.parameters()).device
            build_latent_cache(folder, vqvae, datasets, cfg, key, device=device, log=log, progress=progress, num_workers=num_workers)
            built = True
        else:
            log(f"latent cache: reusing {folder}")
    if accelerator is not None:
        accelerator.wait_for_everyone()
    cache = load_latent_cache(folder, key)
    cache.built = built
    cache.seconds = time.perf_counter() - start
    return cache


# ----------------------------------------------------------------------------- code cache (priors)
CODES_FILE = "codes.safetensors"


class CodeSplit(CachedSplit):
    """Code indices of one split: ``codes`` N x T, int64, raster order of the h x w grid."""

    @property
    def codes(self) -> torch.Tensor:
        return self.items


@dataclass
class CodeCache:
    folder: Path
    key: str
    grid: tuple[int, int]  # (h, w)
    train: CodeSplit
    holdout: CodeSplit
    class_names: list[str] = field(default_factory=list)
    built: bool = False


@torch.inference_mode()
def latents_to_codes(vqvae: VQModel, latents: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Scaled cached latents N x C x h x w -> the vqvae's nearest-code indices N x (h*w) (a residual /
    hierarchical vqvae: N x L tokens), int64."""
    device = next(vqvae.parameters()).device
    out = []
    for part in latents.split(batch_size):
        out.append(_codes(vqvae, part, device))
    return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.long)


def _codes(vqvae: VQModel, part: torch.Tensor, device) -> torch.Tensor:
    h = unscale_latents(part.float().to(device), vqvae)  # the cache holds h * scaling_factor
    return nearest_codes(vqvae, h).view(part.shape[0], -1).cpu().long()  # blocked: K up to 2^16 fits


@torch.inference_mode()
def _write_codes(path: Path, vqvae: VQModel, latents: LatentCache, key: str, batch_size: int = 1024) -> None:
    """codes.safetensors, streaming from the mapped latents: ``train`` [, ``train_hflip``], ``holdout``,
    N x (h*w) int32."""
    device = next(vqvae.parameters()).device
    h, w = code_grid(vqvae, latents.latent_shape)  # (1, L) for a residual / hierarchical autoencoder
    sources = {"train": latents.train.latents, "holdout": latents.holdout.latents}
    if latents.train.flipped is not None:
        sources["train_hflip"] = latents.train.flipped
    specs = {name: (torch.int32, (t.shape[0], h * w)) for name, t in sources.items()}
    with TensorFileWriter(path, specs, metadata={"key": key}) as writer:
        for name, t in sources.items():
            for start in range(0, t.shape[0], batch_size):
                writer.write(name, start, _codes(vqvae, t[start : start + batch_size], device).to(torch.int32))


def prepare_code_cache(root: str | os.PathLike, vqvae: VQModel, datasets: Datasets, cfg: CacheConfig, image_size: int,
                       channels: int, fit: str, accelerator=None, log: Callable[[str], None] = print, progress: bool = True,
                       num_workers: int | None = None) -> CodeCache:
    """The dataset as code indices, stored beside its latent cache (same folder, same key): the latents are
    encoded once (or reused), their nearest codes written once to ``codes.safetensors`` (atomically, by the
    main process) and mapped by every process."""
    latents = prepare_latent_cache(root, vqvae, datasets, cfg, image_size, channels, fit, accelerator=accelerator, log=log,
                                   progress=progress, num_workers=num_workers)
    path = latents.folder / CODES_FILE
    is_main = accelerator is None or accelerator.is_main_process
    built = False
    if is_main and not path.is_file():
        _write_codes(path, vqvae, latents, latents.key)
        built = True
        log(f"code cache: {len(latents.train.latents)} train + {len(latents.holdout.latents)} holdout code grids in {path}")
    if accelerator is not None:
        accelerator.wait_for_everyone()
    codes = mmap_tensors(path)
    h, w = code_grid(vqvae, latents.latent_shape)
    return CodeCache(
        folder=latents.folder, key=latents.key, grid=(h, w),
        train=CodeSplit(codes["train"], latents.train.labels, codes.get("train_hflip"), latents.train.captions),
        holdout=CodeSplit(codes["holdout"], latents.holdout.labels, captions=latents.holdout.captions),
        class_names=latents.class_names, built=built or latents.built,
    )
