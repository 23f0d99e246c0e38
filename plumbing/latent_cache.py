"""The latent cache: the dataset encoded once through the frozen autoencoder, reused by every run.

What is stored is what the UNet trains on: the *pre-quantization* latents h = ``vqvae.encode(x).latents``
times ``scaling_factor`` (LDM convention, DESIGN.md), as N x C x h x w tensors, plus the labels (int64,
-1 = none). With ``hflip`` a second view holds the latents of the horizontally flipped images (the
encoder is not flip-equivariant, so the flip is applied to the image, not to the latent).

Layout (one folder per key, so runs with different autoencoders or data never overwrite each other)::

    <root>/<key[:16]>/index.json                  format, key, shapes, shard names, class names
    <root>/<key[:16]>/train-00000.safetensors     "latents" [, "latents_hflip"], "labels"
    <root>/<key[:16]>/holdout-00000.safetensors   "latents", "labels"   (for evaluation / FID)

The key is a hash of the vqvae (config + every weight), the data fingerprints, the image geometry,
``hflip`` and the stored dtype: anything that changes the latents changes the key, and a cache is reused
only when the key in its ``index.json`` matches. Folders are built under a temporary name and renamed
into place, so a half-written cache is never read. In a distributed run the main process builds it while
the others wait at a barrier, then every process reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
from diffusers import VQModel
from safetensors.torch import save_file

from .checkpoint import AtomicDir, load_safetensors, save_safetensors, weights_sha256
from .data import Datasets, ImageData
from .errors import UserError
from .geometry import scale_latents, unscale_latents


@dataclass
class CacheConfig:
    """The latent cache: the dataset encoded once through the autoencoder (this module)."""

    folder: str | None = None  # default: <autoencoder run>/latent_cache if writable, else <out>/latent_cache
    shard_size: int = 16384  # latents per safetensors shard
    hflip: bool = False  # also store the latents of horizontally flipped images (a second view)
    encode_batch_size: int = 256
    holdout_max_images: int | None = None  # encode at most this many held-out images (None = all)
    dtype: Literal["float32", "float16"] = "float32"  # float16 halves disk and memory for large latents

    def __post_init__(self):
        if self.shard_size < 1 or self.encode_batch_size < 1:
            raise ValueError("cache.shard_size and cache.encode_batch_size must be >= 1")


FORMAT = "vqldm-latent-cache"
VERSION = 1


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
    ``flipped`` the items of the mirrored images or None. Item ``i`` is image ``i`` for ``i < N`` and the
    mirrored image ``i - N`` for ``N <= i < 2N``."""

    items: torch.Tensor
    labels: torch.Tensor
    flipped: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.items.shape[0] * (2 if self.flipped is not None else 1)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``indices`` (views included; float32 for latents, int64 for codes) and their labels."""
        out, src = gather_views(self.items, self.flipped, indices)
        return (out.float() if out.is_floating_point() else out), self.labels[src]


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
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- encoding
@torch.inference_mode()
def encode_latents(
    vqvae: VQModel,
    data: ImageData,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    hflip: bool = False,
    progress: bool = False,
    desc: str = "encoding latents",
) -> torch.Tensor:
    """N x C x h x w float32: ``vqvae.encode(x).latents * scaling_factor`` for every image (mirrored
    first when ``hflip``), in dataset order."""
    vqvae.eval()
    chunks = []
    for x, _ in data.batches(batch_size, progress=progress, desc=desc):
        if hflip:
            x = x.flip(-1)
        h = vqvae.encode(x.to(device)).latents
        chunks.append(scale_latents(h.float(), vqvae).cpu())
    return torch.cat(chunks)


def _write_split(tmp: Path, name: str, tensors: dict[str, torch.Tensor], shard_size: int) -> list[str]:
    n = tensors["labels"].shape[0]
    shards = []
    for i, start in enumerate(range(0, max(n, 1), shard_size)):
        fname = f"{name}-{i:05d}.safetensors"
        save_file({k: v[start : start + shard_size].contiguous() for k, v in tensors.items()}, str(tmp / fname))
        shards.append(fname)
    return shards


def build_latent_cache(
    folder: str | os.PathLike,
    vqvae: VQModel,
    datasets: Datasets,
    cfg: CacheConfig,
    key: str,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> None:
    """Encode both splits and write the cache folder atomically (temporary folder, then rename)."""
    folder = Path(folder)
    dtype = getattr(torch, cfg.dtype)
    start = time.perf_counter()
    train = {
        "latents": encode_latents(vqvae, datasets.train, cfg.encode_batch_size, device, progress=progress, desc="encoding train latents").to(dtype),
        "labels": datasets.train.labels.clone(),
    }
    if cfg.hflip:
        train["latents_hflip"] = encode_latents(
            vqvae, datasets.train, cfg.encode_batch_size, device, hflip=True, progress=progress, desc="encoding mirrored latents"
        ).to(dtype)
    holdout = {
        "latents": encode_latents(vqvae, datasets.holdout, cfg.encode_batch_size, device, progress=progress, desc="encoding holdout latents").to(dtype),
        "labels": datasets.holdout.labels.clone(),
    }
    with AtomicDir(folder) as tmp:
        index = {
            "format": FORMAT,
            "version": VERSION,
            "key": key,
            "latent_shape": list(train["latents"].shape[1:]),
            "dtype": cfg.dtype,
            "hflip": cfg.hflip,
            "scaling_factor": float(vqvae.config.scaling_factor),
            "class_names": list(datasets.train.class_names),
            "source": datasets.source,
            "splits": {
                "train": {"count": len(datasets.train), "shards": _write_split(tmp, "train", train, cfg.shard_size)},
                "holdout": {"count": len(datasets.holdout), "shards": _write_split(tmp, "holdout", holdout, cfg.shard_size)},
            },
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
    """Read a cache folder into memory; with ``key``, refuse a cache built for something else."""
    folder = Path(folder)
    start = time.perf_counter()
    index = read_index(folder)
    if index is None:
        raise UserError(f"{str(folder)!r} is not a latent cache (no valid index.json); delete it to rebuild")
    if key is not None and index.get("key") != key:
        raise UserError(f"latent cache {str(folder)!r} was built for another autoencoder or data; delete it to rebuild")

    def split(name: str) -> LatentSplit:
        parts = [load_safetensors(folder / s) for s in index["splits"][name]["shards"]]
        cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return LatentSplit(cat["latents"], cat["labels"], cat.get("latents_hflip"))

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
) -> LatentCache:
    """Reuse the cache under ``root`` whose key matches, or build it (main process only), then load it.

    With an ``accelerate.Accelerator``, the main process builds on its device while the others wait at
    ``wait_for_everyone``; afterwards every process reads the same folder (shared storage for multi-node).
    """
    if cfg.holdout_max_images is not None and len(datasets.holdout) > cfg.holdout_max_images:
        h = datasets.holdout
        n = cfg.holdout_max_images
        datasets = Datasets(datasets.train, ImageData(h.images[:n], h.labels[:n], h.class_names), datasets.skipped, datasets.source)
    key = cache_key(vqvae, datasets, cfg, image_size, channels, fit)
    folder = Path(root) / key[:16]
    is_main = accelerator is None or accelerator.is_main_process
    built = False
    start = time.perf_counter()
    if is_main:
        index = read_index(folder)
        if index is None or index.get("key") != key:
            device = accelerator.device if accelerator is not None else next(vqvae.parameters()).device
            build_latent_cache(folder, vqvae, datasets, cfg, key, device=device, log=log, progress=progress)
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
    """Scaled cached latents N x C x h x w -> the vqvae's nearest-code indices N x (h*w), int64."""
    device = next(vqvae.parameters()).device
    out = []
    for part in latents.split(batch_size):
        h = unscale_latents(part.float().to(device), vqvae)  # the cache holds h * scaling_factor
        _, _, (_, _, indices) = vqvae.quantize(h)
        out.append(indices.view(part.shape[0], -1).cpu().long())
    return torch.cat(out)


def prepare_code_cache(root: str | os.PathLike, vqvae: VQModel, datasets: Datasets, cfg: CacheConfig, image_size: int,
                       channels: int, fit: str, accelerator=None, log: Callable[[str], None] = print, progress: bool = True) -> CodeCache:
    """The dataset as code indices, stored beside its latent cache (same folder, same key): the latents are
    encoded once (or reused), their nearest codes written once to ``codes.safetensors`` (atomically, by the
    main process) and read by every process."""
    latents = prepare_latent_cache(root, vqvae, datasets, cfg, image_size, channels, fit, accelerator=accelerator, log=log, progress=progress)
    path = latents.folder / CODES_FILE
    is_main = accelerator is None or accelerator.is_main_process
    built = False
    if is_main and not path.is_file():
        tensors = {"train": latents_to_codes(vqvae, latents.train.latents), "holdout": latents_to_codes(vqvae, latents.holdout.latents)}
        if latents.train.flipped is not None:
            tensors["train_hflip"] = latents_to_codes(vqvae, latents.train.flipped)
        save_safetensors(tensors, path, metadata={"key": latents.key})
        built = True
        log(f"code cache: {tensors['train'].shape[0]} train + {tensors['holdout'].shape[0]} holdout code grids in {path}")
    if accelerator is not None:
        accelerator.wait_for_everyone()
    codes = load_safetensors(path)
    _, h, w = latents.latent_shape
    return CodeCache(
        folder=latents.folder, key=latents.key, grid=(h, w),
        train=CodeSplit(codes["train"].long(), latents.train.labels, codes["train_hflip"].long() if "train_hflip" in codes else None),
        holdout=CodeSplit(codes["holdout"].long(), latents.holdout.labels),
        class_names=latents.class_names, built=built or latents.built,
    )
