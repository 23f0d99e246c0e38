"""Sources (``--data``): image folders, Hugging Face datasets and named datasets, each opened as a pair of
splits (training, held-out).

Sources (``--data``)
* a folder of images, searched recursively (PNG, JPEG, WebP, BMP, GIF, TIFF); with ``labels: folders``
  each first-level subfolder is a class. The folder is indexed once (:mod:`.folder_index`: corrupt,
  truncated, zero-byte, non-image and oversized files are skipped with a warning and counted; a restart
  only ``stat``s the files); images are decoded when a batch needs them, in DataLoader workers.
* ``hf:NAME``: a Hugging Face ``datasets`` dataset: a Hub name (downloaded once by ``datasets``), a
  folder written by ``save_to_disk``, or a local folder of data files (parquet, arrow, or an image
  folder). Arrow files are memory-mapped, so every process shares them. The first Image column holds
  the images, a ClassLabel column (``label``, else the first) the classes; the ``test`` (or
  ``validation``) split is the held-out one, else a stable fraction of the rows. With ``data.streaming``
  it is read as a stream instead, nothing downloaded up front (:mod:`.streaming`).
* ``shards:DIR`` or ``shards:PATTERN``: webdataset-layout tar shards (``train-{000000..000127}.tar``), local
  or at URLs, read map-style with a shard-aware batch order (:mod:`.shards`; ``vqldm shard`` writes them).
* a named dataset: ``fashion-mnist``, ``mnist``, ``cifar10`` (torchvision downloads them for online
  users; Fashion-MNIST is also read from Debian's ``/usr/share/datasets/fashion-mnist``). These are
  small and kept in memory as uint8.

Every image is brought to ``channels`` x ``image_size`` x ``image_size`` (``fit``: pad, resize or crop);
training batches and their augmentation are drawn in :mod:`.loading`. With ``data.captions`` each split
also carries a caption per image (:mod:`.captions`: where each source keeps them), and an image without
one is an error here.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..plumbing.errors import UserError
from .captions import PackedStrings, caption_column, caption_files, caption_text, check_captions, folder_captions, no_captions
from .config import DataConfig
from .decode import fit_array
from .folder_index import SkippedFile, index_folder, skipped_summary
from .splits import ArraySplit, Datasets, FileSplit, Geometry, HFSplit

NAMED_DATASETS = ("fashion-mnist", "mnist", "cifar10")
HF_PREFIX = "hf:"
SHARDS_PREFIX = "shards:"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


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
    if cfg.captions:
        raise no_captions(name)
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
    captions, text_files = folder_captions(root, index.entries) if cfg.captions else ({}, caption_files(index.entries))
    skipped = [s for s in index.skipped if s.path not in text_files]  # caption files (.txt, metadata.jsonl) are not skipped images
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
        texts = PackedStrings.of([captions.get(rel, "") for rel in files]) if cfg.captions else None
        return FileSplit(root, files, stats, torch.as_tensor(labels, dtype=torch.long), class_names, geometry, texts)

    return Datasets(train=split(train), holdout=split(holdout), skipped=skipped, source=str(root))


# ----------------------------------------------------------------------------- Hugging Face datasets
def hf_load(name: str, config: str | None = None, streaming: bool = False):
    """``datasets.load_from_disk`` for a ``save_to_disk`` folder, else ``datasets.load_dataset`` (Hub name or
    data folder; ``streaming``: as ``IterableDataset``s, nothing downloaded up front)."""
    import datasets as hf

    path = Path(name).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            return hf.load_from_disk(str(path))  # written by save_to_disk (memory-mapped: streamed from it by the caller)
        return hf.load_dataset(str(path) if path.is_dir() else name, config, streaming=streaming)
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
    ``labels``, else the first) of a loaded dataset (``Dataset``s or streamed ``IterableDataset``s); a
    UserError when it has no split or no images."""
    import datasets as hf

    splits = {"train": loaded} if isinstance(loaded, (hf.Dataset, hf.IterableDataset)) else dict(loaded)
    if not splits:
        raise UserError(f"the Hugging Face dataset {name!r} has no splits; pass another dataset")
    train_name = "train" if "train" in splits else sorted(splits)[0]
    holdout_name = next((s for s in ("test", "validation", "valid", "val") if s in splits and s != train_name), None)
    features = splits[train_name].features
    if features is None:  # some streams (json, generators) only know their columns' types from the rows
        try:
            splits[train_name] = splits[train_name]._resolve_features()
            features = splits[train_name].features
        except Exception:
            features = None
        if features is None:
            raise UserError(f"the stream of the Hugging Face dataset {name!r} does not say its columns' types; "
                            "drop data.streaming (download it) or pass a dataset with an Image column")
    image_column = next((k for k, f in features.items() if isinstance(f, hf.Image)), None)
    if image_column is None:
        raise UserError(f"the Hugging Face dataset {name!r} has no Image column (columns: {', '.join(features)}); pass a dataset of images")
    label_columns = [k for k, f in features.items() if isinstance(f, hf.ClassLabel)]
    label_column = next((k for k in ("label", "labels") if k in label_columns), label_columns[0] if label_columns else None)
    class_names = list(features[label_column].names) if label_column else []
    if isinstance(splits[train_name], hf.Dataset) and len(splits[train_name]) == 0:  # a stream is checked as it is read
        raise UserError(f"the {train_name!r} split of the Hugging Face dataset {name!r} is empty; pass another dataset")
    return HFLayout(splits, train_name, holdout_name, image_column, label_column, class_names)


def load_hf(name: str, cfg: DataConfig) -> Datasets:
    """``hf:NAME``: train and held-out splits of a ``datasets`` dataset (see the module docstring)."""
    import datasets as hf

    if cfg.streaming:
        from .streaming import load_hf_stream

        return load_hf_stream(name, cfg)
    layout = hf_layout(name, hf_load(name, cfg.hf_config))
    splits, image_column, label_column, class_names = layout.splits, layout.image_column, layout.label_column, layout.class_names
    train_name, holdout_name = layout.train, layout.holdout
    train_ds = splits[train_name]
    geometry = Geometry.of(cfg)
    text_column = caption_column(name, train_ds.column_names, cfg.caption_column) if cfg.captions else None
    fix = f"fill in the {text_column!r} column of every row, or name another with --set data.caption_column=NAME"

    def make(ds, rows: np.ndarray, split_name: str) -> HFSplit:
        ds = ds.cast_column(image_column, hf.Image(decode=False))  # bytes in, decoded by decode_image
        if label_column:
            labels = torch.as_tensor(np.asarray(ds[label_column])[rows] if len(rows) else np.zeros(0), dtype=torch.long)
        else:
            labels = torch.full((len(rows),), -1, dtype=torch.long)
        texts = None
        if text_column is not None:
            if text_column not in ds.column_names:  # a held-out split without the column: every caption missing
                values = [None] * len(ds)
            else:
                values = ds[text_column]
            where = f"the {text_column!r} column of hf:{name} ({split_name} split)"
            texts = PackedStrings.of([caption_text(values[int(r)], where) for r in rows])
        return HFSplit(ds, image_column, rows, labels, class_names, geometry, f"hf:{name}", texts, fix)

    n = len(train_ds)
    if holdout_name is not None:
        train = make(train_ds, np.arange(n, dtype=np.int64), train_name)
        holdout = make(splits[holdout_name], np.arange(len(splits[holdout_name]), dtype=np.int64), holdout_name)
    else:
        held = np.array([_in_holdout(str(i), cfg.holdout_fraction) for i in range(n)], dtype=bool)
        if held.all():
            held[0] = False
        rows_train, rows_held = np.flatnonzero(~held), np.flatnonzero(held)
        if len(rows_held) == 0:
            rows_held = rows_train[-1:]
        train, holdout = make(train_ds, rows_train, train_name), make(train_ds, rows_held, train_name)
    return Datasets(train=train, holdout=holdout, source=HF_PREFIX + name)


# ----------------------------------------------------------------------------- any source
def load_datasets(source: str | None, cfg: DataConfig, log: Callable[[str], None] = print, progress: bool = True,
                  accelerator=None) -> Datasets:
    """Train and held-out splits of ``source``: a folder path, ``hf:NAME``, ``shards:SPEC``, or a named dataset. With an
    ``accelerate.Accelerator``, the main process indexes a folder first and the others then reuse its index."""
    if not source:
        raise UserError("no data given; pass --data with an image folder, hf:NAME (a Hugging Face dataset), shards:DIR "
                        "(tar shards) or one of: " + ", ".join(NAMED_DATASETS))
    if cfg.streaming and not source.startswith(HF_PREFIX):  # shards are read on demand already
        raise UserError(f"data.streaming reads Hugging Face datasets (--data hf:NAME), not {source!r}; "
                        "drop data.streaming (--set data.streaming=false) or pass hf:NAME")
    if cfg.captions and cfg.streaming:
        raise UserError("captions are read from a downloaded dataset, not a stream; drop data.streaming "
                        "(--set data.streaming=false) or save a subset with save_to_disk and pass hf:FOLDER")
    if source.startswith(SHARDS_PREFIX):
        from .shards import load_shards  # imported here: shards imports this module

        ds = load_shards(source[len(SHARDS_PREFIX):], cfg, log=log, progress=progress, accelerator=accelerator)
    elif source.startswith(HF_PREFIX):
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
    if cfg.captions:
        check_captions(ds.train, repr(ds.source))
        check_captions(ds.holdout, repr(ds.source), part="held-out")
    return ds


