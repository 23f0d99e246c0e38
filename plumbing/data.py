"""Data: image folders, Hugging Face datasets and named datasets, read a batch at a time, with a
held-out split.

Sources (``--data``)
* a folder of images, searched recursively (PNG, JPEG, WebP, BMP, GIF, TIFF); with ``labels: folders``
  each first-level subfolder is a class. The folder is indexed once (:mod:`.folder_index`: corrupt,
  truncated, zero-byte, non-image and oversized files are skipped with a warning and counted; a restart
  only ``stat``s the files); images are decoded when a batch needs them, in DataLoader workers.
* ``hf:NAME``: a Hugging Face ``datasets`` dataset: a Hub name (downloaded once by ``datasets``), a
  folder written by ``save_to_disk``, or a local folder of data files (parquet, arrow, or an image
  folder). Arrow files are memory-mapped, so every process shares them. The first Image column holds
  the images, a ClassLabel column (``label``, else the first) the classes; the ``test`` (or
  ``validation``) split is the held-out one, else a stable fraction of the rows.
* a named dataset: ``fashion-mnist``, ``mnist``, ``cifar10`` (torchvision downloads them for online
  users; Fashion-MNIST is also read from Debian's ``/usr/share/datasets/fashion-mnist``). These are
  small and kept in memory as uint8.

Every image is brought to ``channels`` x ``image_size`` x ``image_size`` (``fit``: pad, resize or crop),
with optional random crops and flips for training. Batches are drawn by :class:`BatchSampler`, whose
order depends only on (seed, epoch, rank), and the random crop and flip of an image only on (seed,
epoch, image): a resumed run, and a run on 1 or N processes, sees exactly the same batches.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from .decode import IMAGE_SUFFIXES, decode_image, fit_array, load_image, pil_to_array  # noqa: F401 (re-exported)
from .errors import UserError
from .folder_index import SkippedFile, cache_dir, default_workers, index_folder, skipped_summary
from .geometry import size_hw

NAMED_DATASETS = ("fashion-mnist", "mnist", "cifar10")
HF_PREFIX = "hf:"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


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
    num_workers: int | None = None  # decoding processes for folders and hf: datasets (None: cores - 1, at most 8)
    random_crop: bool = False  # training: crop at a random place instead of the centre (fit resize/crop, non-square images)
    random_flip: bool = False  # training: mirror each image left-right with probability 1/2
    hf_config: str | None = None  # --data hf:NAME: the dataset's configuration (subset) name, where it has several

    def __post_init__(self):
        if self.image_size < 8:
            raise ValueError(f"data.image_size must be >= 8, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {self.channels}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"data.holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0 (or null for automatic), got {self.num_workers}")


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
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0 (or null for automatic), got {self.num_workers}")


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
        random_crop=cfg.random_crop,
        random_flip=cfg.random_flip,
        hf_config=cfg.hf_config,
    )


def load_latent_stage_data(cfg: LatentDataConfig, ae_data: dict | None, vqvae_config, data: str | None,
                           log: Callable[[str], None] = print, progress: bool = True, accelerator=None) -> tuple["Datasets", DataConfig]:
    """The images a stage trained on an autoencoder's latents reads: geometry from the autoencoder, source
    from ``--data``, the config, or the autoencoder run's; ``cfg`` is filled in with what was used (so the
    run's config.yaml says it)."""
    data_cfg = resolve_latent_data(cfg, ae_data, vqvae_config)
    datasets = load_datasets(data or cfg.source or (ae_data or {}).get("source"), data_cfg, log=log, progress=progress,
                             accelerator=accelerator)
    cfg.source, cfg.image_size, cfg.channels, cfg.fit = datasets.source, data_cfg.image_size, data_cfg.channels, data_cfg.fit
    return datasets, data_cfg


def conditioning_classes(train: "ImageSplit", class_conditional: bool) -> int:
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



# ----------------------------------------------------------------------------- splits
def chw_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 H x W x C array -> a C x H x W tensor that owns its memory (a decoded image can be read-only)."""
    return torch.from_numpy(np.array(arr.transpose(2, 0, 1), order="C"))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


class ImageSplit(torch.utils.data.Dataset):
    """One split of a dataset, read on demand: item ``i`` is (uint8 C x H x W image, int64 label, -1 = none).

    Subclasses say how image ``i`` is read (:meth:`read`); the split knows its labels, class names and
    a fingerprint that identifies its content for caches without reading any image.
    """

    labels: torch.Tensor
    class_names: list[str]
    in_memory = False  # True: items are cheap (no decoding), read them in the main process

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def read(self, i: int, offset: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
        """Image ``i`` as uint8 H x W x C at the split's geometry, cropped at ``offset`` where larger."""
        raise NotImplementedError

    def subset(self, n: int) -> "ImageSplit":
        """The first ``n`` items."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return chw_tensor(self.read(int(i))), self.labels[i]

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [-1, 1] and labels for ``indices`` (decoded here, or by workers when many)."""
        idx = torch.as_tensor(indices, dtype=torch.long).flatten()
        if len(idx) > 256:  # many: decode in worker processes
            chunks = [c.tolist() for c in idx.split(64)]
            return to_float(torch.cat([x for x, _ in make_loader(self, chunks)])), self.labels[idx]
        images = torch.stack([self[int(i)][0] for i in idx]) if len(idx) else torch.empty(0, dtype=torch.uint8)
        return to_float(images), self.labels[idx]

    def batches(self, batch_size: int, limit: int | None = None, progress: bool = False, desc: str = "images",
                num_workers: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images in [-1, 1], labels) for the first ``limit`` items (all when None), in order, ``batch_size``
        at a time, decoded by DataLoader workers."""
        n = len(self) if limit is None else min(len(self), limit)
        loader = make_loader(self, [list(range(s, min(n, s + batch_size))) for s in range(0, n, batch_size)], num_workers)
        with tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for x, y in loader:
                bar.update(len(y))
                yield to_float(x), y


class ArraySplit(ImageSplit):
    """A split held in memory as uint8 N x C x H x W (the small named datasets, tests)."""

    in_memory = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: list[str] | None = None):
        self.images, self.labels, self.class_names = images, labels, list(class_names or [])

    def read(self, i: int, offset: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
        return self.images[i].permute(1, 2, 0).numpy()  # already at the model's geometry: nothing to crop

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long).flatten()
        return to_float(self.images[idx]), self.labels[idx]

    def batches(self, batch_size: int, limit: int | None = None, progress: bool = False, desc: str = "images",
                num_workers: int | None = None):
        n = len(self) if limit is None else min(len(self), limit)
        for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
            yield self.batch(torch.arange(start, min(n, start + batch_size)))

    def subset(self, n: int) -> "ArraySplit":
        return ArraySplit(self.images[:n], self.labels[:n], self.class_names)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(str(tuple(self.images.shape)).encode())
        h.update(self.images.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass
class Geometry:
    """What every image is brought to."""

    channels: int
    size: int
    fit: str

    @classmethod
    def of(cls, cfg: DataConfig) -> "Geometry":
        return cls(cfg.channels, cfg.image_size, cfg.fit)


class FileSplit(ImageSplit):
    """Image files of an indexed folder (paths relative to ``root``), decoded and fitted when read."""

    def __init__(self, root: Path, files, stats, labels: torch.Tensor, class_names: list[str], geometry: Geometry):
        # numpy arrays, not lists of Python objects: forked DataLoader workers would touch every object's
        # reference count and so copy the pages of a large list into each worker
        self.root, self.files = root, np.asarray(files, dtype=str)
        self.stats = np.asarray(stats, dtype=np.int64).reshape(-1, 2)  # size, mtime_ns
        self.labels, self.class_names, self.geometry = labels, list(class_names), geometry

    def read(self, i: int, offset: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
        g = self.geometry
        try:
            return load_image(self.root / str(self.files[i]), g.channels, g.size, g.fit, offset)
        except ValueError as err:
            raise UserError(f"image {str(self.files[i])!r} in {str(self.root)!r} cannot be read any more ({err}); it changed "
                            "after the folder was indexed: run again to re-index") from None

    def subset(self, n: int) -> "FileSplit":
        return FileSplit(self.root, self.files[:n], self.stats[:n], self.labels[:n], self.class_names, self.geometry)

    def fingerprint(self) -> str:
        """From the index (path, size, mtime, label of each file), not from the pixels."""
        h = hashlib.sha256()
        for rel, (size, mtime), label in zip(self.files.tolist(), self.stats.tolist(), self.labels.tolist()):
            h.update(f"{rel}\0{size}\0{mtime}\0{label}\n".encode())
        return h.hexdigest()[:16]


class HFSplit(ImageSplit):
    """Rows of a Hugging Face ``datasets.Dataset`` (memory-mapped Arrow); the image column is read
    undecoded and decoded here, so every image goes through the same checks as a file."""

    def __init__(self, dataset, image_column: str, rows: np.ndarray, labels: torch.Tensor, class_names: list[str],
                 geometry: Geometry, name: str):
        self.dataset, self.image_column, self.rows = dataset, image_column, rows
        self.labels, self.class_names, self.geometry, self.name = labels, list(class_names), geometry, name

    def read(self, i: int, offset: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
        g = self.geometry
        row = int(self.rows[i])
        value = self.dataset[row][self.image_column]
        try:
            data = value.get("bytes") if isinstance(value, dict) else None
            source = data if data else (value or {}).get("path")
            if not source:
                raise ValueError("empty")
            return fit_array(decode_image(source, g.channels), g.size, g.fit, offset=offset)
        except ValueError as err:
            raise UserError(f"row {row} of {self.name!r} is not a usable image ({err}); remove it from the dataset") from None

    def subset(self, n: int) -> "HFSplit":
        return HFSplit(self.dataset, self.image_column, self.rows[:n], self.labels[:n], self.class_names, self.geometry, self.name)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(str(getattr(self.dataset, "_fingerprint", self.name)).encode())
        h.update(self.rows.tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass
class Datasets:
    train: ImageSplit
    holdout: ImageSplit
    skipped: list[SkippedFile] = field(default_factory=list)
    source: str = ""

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


# ----------------------------------------------------------------------------- loaders
def make_loader(split: ImageSplit, batches, num_workers: int | None = None, pin_memory: bool = False):
    """A DataLoader that reads ``split`` in the index lists ``batches`` (any iterable, also endless):
    uint8 images and labels, decoded in ``num_workers`` processes (None: one per core but one; in-memory
    splits are read in this process)."""
    workers = 0 if split.in_memory else (default_workers() if num_workers is None else num_workers)
    # Its own generator: a DataLoader otherwise draws its workers' base seed from the global RNG, which a
    # resumed run would then continue differently (nothing here is random: crops and flips have their own).
    return torch.utils.data.DataLoader(split, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory,
                                       prefetch_factor=4 if workers else None, generator=torch.Generator().manual_seed(0))


class _Augmented(torch.utils.data.Dataset):
    """Training views of a split: item (i, epoch) is image i, cropped at a random place and/or mirrored
    as drawn from (seed, epoch, i) alone, so resumed and multi-process runs see the same pixels."""

    def __init__(self, split: ImageSplit, seed: int, crop: bool, flip: bool):
        self.split, self.seed, self.crop, self.flip = split, seed, crop, flip
        self.in_memory, self.labels = split.in_memory, split.labels

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, epoch = item
        rng = np.random.default_rng([self.seed, epoch, i])
        u = rng.integers(0, 1001, size=3) / 1000.0
        offset = (float(u[0]), float(u[1])) if self.crop else (0.5, 0.5)
        arr = self.split.read(i, offset)
        if self.flip and u[2] >= 0.5:
            arr = arr[:, ::-1]
        return chw_tensor(arr), self.split.labels[i]


class _StepBatches:
    """The batch_sampler of a training loader: the sampler's batches from ``start_step`` on, each index
    paired with its epoch (for the augmentation)."""

    def __init__(self, sampler: "BatchSampler", start_step: int, with_epoch: bool):
        self.sampler, self.start_step, self.with_epoch = sampler, start_step, with_epoch

    def __iter__(self):
        for step, idx in enumerate(self.sampler.batches(self.start_step), self.start_step):
            epoch = step // self.sampler.steps_per_epoch
            yield [(int(i), epoch) for i in idx] if self.with_epoch else idx.tolist()


def train_batches(split: ImageSplit, sampler: "BatchSampler", start_step: int, cfg: DataConfig, seed: int,
                  pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless training batches (images in [-1, 1], labels) from global step ``start_step`` on: the same
    images, in the same order, with the same crops and flips, as an uninterrupted run would see."""
    augment = cfg.random_crop or cfg.random_flip
    dataset = _Augmented(split, seed, cfg.random_crop, cfg.random_flip) if augment else split
    if split.in_memory and not augment:  # no decoding: gather in this process
        for idx in sampler.batches(start_step):
            yield split.batch(idx)
        return
    loader = make_loader(dataset, _StepBatches(sampler, start_step, augment), cfg.num_workers, pin_memory)
    for x, y in loader:
        yield to_float(x), y


# ----------------------------------------------------------------------------- named datasets
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
        splits[split] = ArraySplit(_prepare_arrays(images, cfg), torch.as_tensor(np.array(labels), dtype=torch.long), list(classes))
    return Datasets(train=splits["train"], holdout=splits["test"], source=name)


# ----------------------------------------------------------------------------- folders
def _in_holdout(key: str, fraction: float) -> bool:
    """Stable split: membership depends only on ``key`` (a file's relative path, a row number)."""
    digest = int(hashlib.md5(key.encode("utf-8")).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < fraction


def load_folder(root: Path, cfg: DataConfig, log: Callable[[str], None] = print, progress: bool = True) -> Datasets:
    """The folder's index (built or refreshed: :func:`index_folder`), split into train and held-out
    files; no image is decoded here unless the index needs it."""
    index = index_folder(root, log=log, progress=progress, num_workers=cfg.num_workers)
    skipped = index.skipped
    usable = index.usable
    class_names: list[str] = []
    if cfg.labels == "folders":
        class_names = sorted({rel.split("/")[0] for rel in usable if "/" in rel})
        if usable and not class_names:
            raise UserError(f"--labels folders needs one subfolder per class in {str(root)!r}, found none")
    class_index = {name: i for i, name in enumerate(class_names)}
    splits: dict[str, tuple[list, list, list]] = {"train": ([], [], []), "holdout": ([], [], [])}
    for rel in usable:
        label = -1
        if cfg.labels == "folders":
            if "/" not in rel:
                skipped.append(SkippedFile(rel, "not in a class subfolder"))
                continue
            label = class_index[rel.split("/")[0]]
        e = index.entries[rel]
        files, stats, labels = splits["holdout" if _in_holdout(rel, cfg.holdout_fraction) else "train"]
        files.append(rel)
        stats.append((e.size, e.mtime_ns))
        labels.append(label)
    train, holdout = splits["train"], splits["holdout"]
    if not train[0] and not holdout[0]:  # the error says it all: no warning line before it
        raise UserError(f"no usable image in {str(root)!r} ({len(skipped)} file{'s' if len(skipped) != 1 else ''} skipped: corrupt, truncated, too large or not images); add valid PNG/JPEG/WebP files")
    if skipped:
        log(skipped_summary(skipped, index.num_files, root))
    if not train[0]:  # tiny folders: keep at least one training image
        for part_t, part_h in zip(train, holdout):
            part_t.append(part_h.pop())
    if not holdout[0]:  # and one held-out image, shared with training when there is only one
        for part_t, part_h in zip(train, holdout):
            part_h.append(part_t[-1])
    geometry = Geometry.of(cfg)

    def split(parts) -> FileSplit:
        files, stats, labels = parts
        return FileSplit(root, files, stats, torch.as_tensor(labels, dtype=torch.long), class_names, geometry)

    return Datasets(train=split(train), holdout=split(holdout), skipped=skipped, source=str(root))


# ----------------------------------------------------------------------------- Hugging Face datasets
def hf_load(name: str, config: str | None = None):
    """``datasets.load_from_disk`` for a ``save_to_disk`` folder, else ``datasets.load_dataset`` (Hub name or data folder)."""
    import datasets as hf

    path = Path(name).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            return hf.load_from_disk(str(path))  # written by save_to_disk
        return hf.load_dataset(str(path) if path.is_dir() else name, config)
    except Exception as err:  # datasets raises many types (hub, file, builder errors)
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise UserError(f"could not load the Hugging Face dataset {name!r} ({type(err).__name__}: {first}); check the name "
                        "(or the folder), connect to the internet for a Hub dataset, or pass an image folder") from None


@dataclass
class HFLayout:
    """Which parts of a loaded ``datasets`` dataset vqldm reads."""

    splits: dict
    train: str
    holdout: str | None
    image_column: str
    label_column: str | None
    class_names: list[str]


def hf_layout(name: str, loaded) -> HFLayout:
    """The training and held-out splits, the first Image column and the ClassLabel column (``label``,
    ``labels``, else the first) of a loaded dataset; a UserError when it has no split or no images."""
    import datasets as hf

    splits = {"train": loaded} if isinstance(loaded, hf.Dataset) else dict(loaded)
    if not splits:
        raise UserError(f"the Hugging Face dataset {name!r} has no splits; pass another dataset")
    train_name = "train" if "train" in splits else sorted(splits)[0]
    holdout_name = next((s for s in ("test", "validation", "valid", "val") if s in splits and s != train_name), None)
    features = splits[train_name].features
    image_column = next((k for k, f in features.items() if isinstance(f, hf.Image)), None)
    if image_column is None:
        raise UserError(f"the Hugging Face dataset {name!r} has no Image column (columns: {', '.join(features)}); pass a dataset of images")
    label_columns = [k for k, f in features.items() if isinstance(f, hf.ClassLabel)]
    label_column = next((k for k in ("label", "labels") if k in label_columns), label_columns[0] if label_columns else None)
    class_names = list(features[label_column].names) if label_column else []
    if len(splits[train_name]) == 0:
        raise UserError(f"the {train_name!r} split of the Hugging Face dataset {name!r} is empty; pass another dataset")
    return HFLayout(splits, train_name, holdout_name, image_column, label_column, class_names)


def load_hf(name: str, cfg: DataConfig) -> Datasets:
    """``hf:NAME``: train and held-out splits of a ``datasets`` dataset (see the module docstring)."""
    import datasets as hf

    layout = hf_layout(name, hf_load(name, cfg.hf_config))
    splits, image_column, label_column, class_names = layout.splits, layout.image_column, layout.label_column, layout.class_names
    train_name, holdout_name = layout.train, layout.holdout
    train_ds = splits[train_name]
    geometry = Geometry.of(cfg)

    def make(ds, rows: np.ndarray) -> HFSplit:
        ds = ds.cast_column(image_column, hf.Image(decode=False))  # bytes in, decoded by decode_image
        if label_column:
            labels = torch.as_tensor(np.asarray(ds[label_column])[rows] if len(rows) else np.zeros(0), dtype=torch.long)
        else:
            labels = torch.full((len(rows),), -1, dtype=torch.long)
        return HFSplit(ds, image_column, rows, labels, class_names, geometry, f"hf:{name}")

    n = len(train_ds)
    if holdout_name is not None:
        train = make(train_ds, np.arange(n, dtype=np.int64))
        holdout = make(splits[holdout_name], np.arange(len(splits[holdout_name]), dtype=np.int64))
    else:
        held = np.array([_in_holdout(str(i), cfg.holdout_fraction) for i in range(n)], dtype=bool)
        if held.all():
            held[0] = False
        rows_train, rows_held = np.flatnonzero(~held), np.flatnonzero(held)
        if len(rows_held) == 0:
            rows_held = rows_train[-1:]
        train, holdout = make(train_ds, rows_train), make(train_ds, rows_held)
    return Datasets(train=train, holdout=holdout, source=HF_PREFIX + name)


# ----------------------------------------------------------------------------- any source
def load_datasets(source: str | None, cfg: DataConfig, log: Callable[[str], None] = print, progress: bool = True,
                  accelerator=None) -> Datasets:
    """Train and held-out splits of ``source``: a folder path, ``hf:NAME``, or a named dataset. With an
    ``accelerate.Accelerator``, the main process indexes a folder first and the others then reuse its index."""
    if not source:
        raise UserError("no data given; pass --data with an image folder, hf:NAME (a Hugging Face dataset) or one of: "
                        + ", ".join(NAMED_DATASETS))
    if source.startswith(HF_PREFIX):
        if not source[len(HF_PREFIX):]:
            raise UserError("--data hf: needs a dataset name or folder after 'hf:', e.g. hf:user/dataset")
        ds = load_hf(source[len(HF_PREFIX):], cfg)
    else:
        path = Path(source).expanduser()
        if path.exists():
            if not path.is_dir():
                raise UserError(f"--data {source!r} is a file, not a folder of images; pass its folder or a named dataset")
            is_main = accelerator is None or accelerator.is_main_process
            if not is_main:  # let the main process index (decode-check) the folder once
                accelerator.wait_for_everyone()
            ds = load_folder(path, cfg, log=log, progress=progress and is_main)
            if accelerator is not None and is_main:
                accelerator.wait_for_everyone()
        elif source.lower() in NAMED_DATASETS:
            ds = load_named(source.lower(), cfg)
        else:
            raise UserError(f"data path {source!r} not found; pass an existing image folder, hf:NAME, or one of: {', '.join(NAMED_DATASETS)}")
    if cfg.max_images is not None and len(ds.train) > cfg.max_images:
        ds.train = ds.train.subset(cfg.max_images)
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
