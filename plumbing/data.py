"""Data: image folders and named datasets as [-1, 1] NCHW tensors, with a held-out split.

Sources
* a folder of images, searched recursively (PNG, JPEG, WebP, BMP, GIF, TIFF); with ``labels: folders``
  each first-level subfolder is a class. Every file is decoded once while scanning: corrupt, truncated,
  zero-byte, non-image and oversized files are skipped with a warning and counted; no usable image at
  all is an error.
* a named dataset: ``fashion-mnist``, ``mnist``, ``cifar10`` (torchvision downloads them for online
  users; Fashion-MNIST is also read from Debian's ``/usr/share/datasets/fashion-mnist``).

All images are brought to ``channels`` x ``image_size`` x ``image_size`` (``fit``: pad, resize or crop)
and kept as uint8 until a batch is drawn. Batches are drawn by :class:`BatchSampler`, whose order depends
only on (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from .errors import UserError
from .geometry import size_hw

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
NAMED_DATASETS = ("fashion-mnist", "mnist", "cifar10")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MAX_IMAGE_PIXELS = 64_000_000  # decompression-bomb limit: 64 megapixels (8000 x 8000)


@dataclass
class DataConfig:
    """Where images come from and how they are brought to the model's size."""

    source: str | None = None  # folder path or named dataset; the CLI's --data overrides it
    image_size: int = 32
    channels: int = 1  # 1 = grayscale, 3 = RGB
    fit: Literal["pad", "resize", "crop"] = "pad"  # pad/crop to size (centered), or resize shorter side + center crop
    labels: Literal["none", "folders"] = "none"  # class labels from first-level subfolders of an image folder
    holdout_fraction: float = 0.05  # image folders only; named datasets use their official test split
    max_images: int | None = None  # use at most this many training images (quick runs)
    num_workers: int = 0

    def __post_init__(self):
        if self.image_size < 8:
            raise ValueError(f"data.image_size must be >= 8, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {self.channels}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"data.holdout_fraction must be in [0, 1), got {self.holdout_fraction}")


@dataclass
class LatentDataConfig(DataConfig):
    """The data section of a stage that trains on an autoencoder's latents (diffusion, priors): a
    :class:`DataConfig` whose image geometry defaults to the autoencoder's.

    ``image_size``, ``channels`` and ``fit`` are ``None`` (= take them from the autoencoder run's
    ``config.yaml``, or from the ``vqvae`` config for a bare VQModel folder). Setting one that disagrees
    with the autoencoder is an error: the latents only mean something for the images the autoencoder saw.
    """

    image_size: int | None = None
    channels: int | None = None
    fit: Literal["pad", "resize", "crop"] | None = None

    def __post_init__(self):
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"data.image_size must be >= 8, got {self.image_size}")
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {self.channels}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"data.holdout_fraction must be in [0, 1), got {self.holdout_fraction}")


def resolve_latent_data(cfg: LatentDataConfig, ae_data: dict | None, vqvae_config) -> DataConfig:
    """The data section with image_size / channels / fit taken from the autoencoder.

    Source of truth: the autoencoder run's ``config.yaml`` data section (``ae_data``), else the vqvae
    config (``sample_size``, ``in_channels``). A value set in ``cfg`` that disagrees is a UserError.
    """
    if ae_data:
        theirs = {k: ae_data.get(k) for k in ("image_size", "channels", "fit")}
    else:
        theirs = {"image_size": size_hw(vqvae_config.sample_size)[0], "channels": vqvae_config.in_channels, "fit": None}
    values = {}
    for key, theirs_value in theirs.items():
        mine = getattr(cfg, key)
        if mine is not None and theirs_value is not None and mine != theirs_value:
            raise UserError(
                f"data.{key} is {mine!r} but the autoencoder was trained with {theirs_value!r}; remove data.{key} "
                f"from the config (it is taken from the autoencoder)"
            )
        values[key] = mine if mine is not None else theirs_value
    if values["image_size"] is None or values["channels"] is None:
        raise UserError("cannot tell the autoencoder's image size or channels; set data.image_size and data.channels")
    return DataConfig(
        source=cfg.source,
        image_size=int(values["image_size"]),
        channels=int(values["channels"]),
        fit=values["fit"] or "pad",
        labels=cfg.labels,
        holdout_fraction=cfg.holdout_fraction,
        max_images=cfg.max_images,
        num_workers=cfg.num_workers,
    )


def load_latent_stage_data(cfg: LatentDataConfig, ae_data: dict | None, vqvae_config, data: str | None,
                           log: Callable[[str], None] = print, progress: bool = True) -> tuple["Datasets", DataConfig]:
    """The images a stage trained on an autoencoder's latents reads: geometry from the autoencoder, source
    from ``--data``, the config, or the autoencoder run's; ``cfg`` is filled in with what was used (so the
    run's config.yaml says it)."""
    data_cfg = resolve_latent_data(cfg, ae_data, vqvae_config)
    datasets = load_datasets(data or cfg.source or (ae_data or {}).get("source"), data_cfg, log=log, progress=progress)
    cfg.source, cfg.image_size, cfg.channels, cfg.fit = datasets.source, data_cfg.image_size, data_cfg.channels, data_cfg.fit
    return datasets, data_cfg


def conditioning_classes(train: "ImageData", class_conditional: bool) -> int:
    """The number of classes a class-conditional model is trained on (0 when unconditional); a UserError
    when a class-conditional model is asked for on unlabelled images."""
    if not class_conditional:
        return 0
    if train.num_classes == 0 or bool((train.labels < 0).any()):
        raise UserError(
            "model.class_conditional is true but the training images have no class labels; pass --labels folders "
            "(one subfolder per class), use a labelled dataset, or --set model.class_conditional=false"
        )
    return train.num_classes


# ----------------------------------------------------------------------------- image decoding
def pil_to_array(img: Image.Image, channels: int) -> np.ndarray:
    """Any PIL mode (1, L, LA, P, RGB, RGBA, CMYK, I;16, I, F) -> uint8 HxWxC array with ``channels``."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            peak = 1.0 if arr.size and arr.max() <= 1.0 else 255.0
        else:
            peak = 65535.0 if (mode.startswith("I;16") or (arr.size and arr.max() > 255)) else 255.0
        arr = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
        mode = "L"
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("LA", "RGBA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # alpha composited over white
        img = Image.alpha_composite(background, rgba).convert("RGB")
    img = img.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def fit_array(arr: np.ndarray, size: int, fit: str, pad_value: int = 0) -> np.ndarray:
    """HxWxC uint8 -> size x size x C, by centered pad/crop or resize-shorter-side + center crop."""
    h, w, c = arr.shape
    if fit == "resize" and (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        img = Image.fromarray(arr[:, :, 0] if c == 1 else arr)
        img = img.resize((nw, nh), Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
        arr = np.asarray(img, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        h, w = nh, nw
    # center crop where larger
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    arr = arr[top : top + size, left : left + size]
    h, w = arr.shape[:2]
    if (h, w) != (size, size):  # center pad where smaller
        out = np.full((size, size, c), pad_value, dtype=np.uint8)
        t, l = (size - h) // 2, (size - w) // 2
        out[t : t + h, l : l + w] = arr
        arr = out
    return arr


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (photos from phones/cameras), as diffusers' ``load_image`` does."""
    try:
        return ImageOps.exif_transpose(img) or img
    except Exception:  # a malformed EXIF block is not worth losing the image over
        return img


def load_image(path: str | os.PathLike, channels: int, size: int, fit: str) -> np.ndarray:
    """Decode one file fully; raises ValueError with a short reason for anything unusable."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ValueError("zero-byte file")
    except OSError as err:
        raise ValueError(f"unreadable ({err.strerror})") from None
    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise ValueError(f"too large ({img.width}x{img.height} pixels, limit {MAX_IMAGE_PIXELS})")
                img.load()
                arr = pil_to_array(_upright(img), channels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"too large (over {MAX_IMAGE_PIXELS} pixels; decompression-bomb limit)") from None
    except UnidentifiedImageError:
        raise ValueError("not an image") from None
    except (OSError, SyntaxError, struct.error, EOFError) as err:
        msg = str(err).lower()
        reason = "truncated" if "truncat" in msg or "incomplete" in msg or "eof" in msg else "corrupt"
        raise ValueError(f"{reason} ({err})") from None
    except MemoryError:
        raise ValueError("too large (out of memory while decoding)") from None
    except Exception as err:  # PIL's decoders raise many types on malformed files (ValueError, IndexError, ...)
        raise ValueError(f"corrupt ({type(err).__name__}: {err})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return fit_array(arr, size, fit)


# ----------------------------------------------------------------------------- datasets
@dataclass
class SkippedFile:
    path: str
    reason: str


@dataclass
class ImageData:
    """A split of images in memory: uint8 N x C x H x W, int64 labels (-1 = none)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def batch(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [-1, 1] and labels for ``indices``."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx].float().div_(127.5).sub_(1.0)
        return x, self.labels[idx]

    def batches(self, batch_size: int, limit: int | None = None, progress: bool = False, desc: str = "images"):
        """(images in [-1, 1], labels) for the first ``limit`` items (all when None), in order, ``batch_size`` at a time."""
        n = len(self) if limit is None else min(len(self), limit)
        for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
            yield self.batch(torch.arange(start, min(n, start + batch_size)))

    def fingerprint(self) -> str:
        """A content hash: identifies the data for caches (latent cache invalidation)."""
        h = hashlib.sha256()
        h.update(str(tuple(self.images.shape)).encode())
        h.update(self.images.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass
class Datasets:
    train: ImageData
    holdout: ImageData
    skipped: list[SkippedFile] = field(default_factory=list)
    source: str = ""

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise UserError(f"could not read {str(path)!r} ({err}); reinstall the dataset") from None
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise UserError(f"{str(path)!r} is not an IDX uint8 file; reinstall the dataset")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise UserError(f"{str(path)!r} is truncated; reinstall the dataset")
    return arr.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def dataset_cache_dir() -> Path:
    return Path(os.environ.get("VQLDM_DATA_DIR", Path.home() / ".cache" / "vqldm" / "datasets"))


def _load_mnist_like(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    candidates = [DEBIAN_FASHION_MNIST] if name == "fashion-mnist" else []
    candidates.append(dataset_cache_dir() / name)
    for root in candidates:
        img_path, lbl_path = _find_idx(root, f"{prefix}-images-idx3-ubyte"), _find_idx(root, f"{prefix}-labels-idx1-ubyte")
        if img_path and lbl_path:
            return _read_idx(img_path), _read_idx(lbl_path)
    # online users: torchvision downloads into the cache folder
    import torchvision

    cls = torchvision.datasets.FashionMNIST if name == "fashion-mnist" else torchvision.datasets.MNIST
    try:
        ds = cls(str(dataset_cache_dir() / f"{name}-torchvision"), train=split == "train", download=True)
    except Exception as err:
        hint = " or `apt-get install dataset-fashion-mnist`" if name == "fashion-mnist" else ""
        raise UserError(f"could not download {name} ({type(err).__name__}); connect to the internet{hint}, or put the IDX files in {dataset_cache_dir() / name}") from None
    return ds.data.numpy(), ds.targets.numpy()


def _load_cifar10(split: str) -> tuple[np.ndarray, np.ndarray]:
    import torchvision

    try:
        ds = torchvision.datasets.CIFAR10(str(dataset_cache_dir() / "cifar10"), train=split == "train", download=True)
    except Exception as err:
        raise UserError(f"could not download cifar10 ({type(err).__name__}); connect to the internet or pass an image folder with --data") from None
    return np.asarray(ds.data), np.asarray(ds.targets)


def _prepare_arrays(images: np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """N x H x W (x C) uint8 -> N x C x S x S uint8 at the configured size and channel count."""
    if images.ndim == 3:
        images = images[:, :, :, None]
    n, h, w, c = images.shape
    if c != cfg.channels:
        if cfg.channels == 1:  # ITU-R 601 luma, as PIL's convert("L")
            images = np.round(images[..., :3] @ np.array([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)[..., None]
        else:
            images = np.repeat(images, 3, axis=3)
    if (h, w) != (cfg.image_size, cfg.image_size):
        images = np.stack([fit_array(im, cfg.image_size, cfg.fit) for im in images])
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def load_named(name: str, cfg: DataConfig) -> Datasets:
    classes = {"fashion-mnist": FASHION_MNIST_CLASSES, "mnist": MNIST_CLASSES, "cifar10": CIFAR10_CLASSES}[name]
    splits = {}
    for split in ("train", "test"):
        images, labels = _load_cifar10(split) if name == "cifar10" else _load_mnist_like(name, split)
        splits[split] = ImageData(_prepare_arrays(images, cfg), torch.as_tensor(np.array(labels), dtype=torch.long), list(classes))
    return Datasets(train=splits["train"], holdout=splits["test"], source=name)


def scan_folder(root: Path) -> list[Path]:
    """All non-hidden files under ``root``, sorted; symlinked folders are followed once (no loops)."""
    files = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # a symlink back into an already scanned folder
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return files


def _in_holdout(rel_path: str, fraction: float) -> bool:
    """Stable split: a file's membership depends only on its relative path."""
    digest = int(hashlib.md5(rel_path.encode("utf-8")).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < fraction


def load_folder(root: Path, cfg: DataConfig, log: Callable[[str], None] = print, progress: bool = True) -> Datasets:
    files = scan_folder(root)
    if not files:
        raise UserError(f"data folder {str(root)!r} is empty; put PNG/JPEG/WebP images in it (subfolders are searched)")
    class_names: list[str] = []
    if cfg.labels == "folders":
        class_names = sorted({f.relative_to(root).parts[0] for f in files if len(f.relative_to(root).parts) > 1})
        if not class_names:
            raise UserError(f"--labels folders needs one subfolder per class in {str(root)!r}, found none")
    class_index = {name: i for i, name in enumerate(class_names)}
    arrays: dict[str, list] = {"train": [], "holdout": []}
    labels: dict[str, list] = {"train": [], "holdout": []}
    skipped: list[SkippedFile] = []
    from tqdm.auto import tqdm

    for path in tqdm(files, desc="scanning images", unit="file", disable=not progress, leave=False):
        rel = path.relative_to(root)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(SkippedFile(str(rel), "not an image (unsupported extension)"))
            continue
        label = -1
        if cfg.labels == "folders":
            if len(rel.parts) < 2:
                skipped.append(SkippedFile(str(rel), "not in a class subfolder"))
                continue
            label = class_index[rel.parts[0]]
        try:
            arr = load_image(path, cfg.channels, cfg.image_size, cfg.fit)
        except ValueError as err:
            skipped.append(SkippedFile(str(rel), str(err).split(" (")[0]))
            continue
        split = "holdout" if _in_holdout(rel.as_posix(), cfg.holdout_fraction) else "train"
        arrays[split].append(arr)
        labels[split].append(label)
    if not arrays["train"] and not arrays["holdout"]:  # the error says it all: no warning line before it
        raise UserError(f"no usable image in {str(root)!r} ({len(skipped)} file{'s' if len(skipped) != 1 else ''} skipped: corrupt, truncated, too large or not images); add valid PNG/JPEG/WebP files")
    if skipped:
        counts = Counter(s.reason for s in skipped)
        log(f"warning: skipped {len(skipped)} of {len(files)} files in {root}: " + ", ".join(f"{n} {r}" for r, n in counts.most_common()))
    if not arrays["train"]:  # tiny folders: keep at least one training image
        arrays["train"].append(arrays["holdout"].pop())
        labels["train"].append(labels["holdout"].pop())
    if not arrays["holdout"]:  # and one held-out image, shared with training when there is only one
        arrays["holdout"].append(arrays["train"][-1])
        labels["holdout"].append(labels["train"][-1])

    def to_data(split: str) -> ImageData:
        x = torch.from_numpy(np.ascontiguousarray(np.stack(arrays[split]).transpose(0, 3, 1, 2)))
        return ImageData(x, torch.as_tensor(labels[split], dtype=torch.long), list(class_names))

    return Datasets(train=to_data("train"), holdout=to_data("holdout"), skipped=skipped, source=str(root))


def load_datasets(source: str | None, cfg: DataConfig, log: Callable[[str], None] = print, progress: bool = True) -> Datasets:
    """Load ``source`` (folder path or named dataset) into train and held-out splits."""
    if not source:
        raise UserError("no data given; pass --data with an image folder or one of: " + ", ".join(NAMED_DATASETS))
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"--data {source!r} is a file, not a folder of images; pass its folder or a named dataset")
        ds = load_folder(path, cfg, log=log, progress=progress)
    elif source.lower() in NAMED_DATASETS:
        ds = load_named(source.lower(), cfg)
    else:
        raise UserError(f"data path {source!r} not found; pass an existing image folder or one of: {', '.join(NAMED_DATASETS)}")
    if cfg.max_images is not None and len(ds.train) > cfg.max_images:
        ds.train = ImageData(ds.train.images[: cfg.max_images], ds.train.labels[: cfg.max_images], ds.train.class_names)
    return ds


# ----------------------------------------------------------------------------- batch order
class BatchSampler:
    """Deterministic, resumable, distributed batch order.

    Each epoch is a permutation drawn from ``seed + epoch``; a global batch of ``batch_size * world``
    indices is split so rank ``r`` takes its own slice. ``batches(start_step)`` yields, from global
    step ``start_step`` on, exactly what an uninterrupted run would have yielded.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if num_items < 1:
            raise UserError("the training split is empty; add images")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        # drop_last semantics, but always at least one batch (sampling with wrap-around for tiny sets)
        self.steps_per_epoch = max(1, num_items // self.global_batch)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_items, generator=g)
        need = self.steps_per_epoch * self.global_batch
        if need > self.num_items:
            order = order.repeat((need + self.num_items - 1) // self.num_items)[:need]
        return order

    def batches(self, start_step: int = 0) -> Iterator[torch.Tensor]:
        step = start_step
        while True:
            epoch, within = divmod(step, self.steps_per_epoch)
            order = self._epoch_order(epoch)
            for i in range(within, self.steps_per_epoch):
                chunk = order[i * self.global_batch : (i + 1) * self.global_batch]
                yield chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
                step += 1
