"""Splits: one set of images (training or held-out) that reads itself an image or a batch at a time.

:class:`ImageSplit` is the interface (``read(i)`` -> H x W x C uint8, ``batch(indices)`` -> images in
[-1, 1] and labels, ``fingerprint()`` for cache keys); :class:`ArraySplit` holds a small dataset in
memory, :class:`FileSplit` decodes files of an indexed folder, :class:`HFSplit` rows of a memory-mapped
Hugging Face dataset. A split read with ``data.captions`` also carries one caption per image (``captions``,
:mod:`.captions`), mixed into its fingerprint. :class:`Datasets` is the pair a source gives (train, holdout) with what was
skipped. Decoding happens in DataLoader workers (:func:`make_loader`), never in the training process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ..plumbing.errors import UserError
from ..plumbing.runs import bar_disable
from .captions import PackedStrings
from .config import DataConfig
from .decode import decode_image, fit_array, load_image
from .folder_index import SkippedFile, default_workers


# ----------------------------------------------------------------------------- splits
def chw_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 H x W x C array -> a C x H x W tensor that owns its memory (a decoded image can be read-only)."""
    return torch.from_numpy(np.array(arr.transpose(2, 0, 1), order="C"))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


class ImageSplit(torch.utils.data.Dataset):
    """One split of a dataset, read on demand: item ``i`` is (uint8 C x H x W image, int64 label, -1 = none).

    Subclasses say how image ``i`` is read (:meth:`read`); the split knows its labels, class names,
    captions (None: not read; else one per image, "" = none) and a fingerprint that identifies its
    content for caches without reading any image.
    """

    labels: torch.Tensor
    class_names: list[str]
    captions: PackedStrings | None = None
    caption_fix: str | None = None  # how to give an image of this split its caption (check_captions' hint)
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

    def item_name(self, i: int) -> str:
        """Image ``i`` as an error message names it."""
        return f"image {i}"

    def _mix_captions(self, h) -> None:
        """Fingerprints: the captions, where read (without, the key is what it was before captions existed)."""
        if self.captions is not None:
            h.update(b"captions\0" + self.captions.digest())

    def batch_sampler(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        """The training batch order of this split on process ``rank`` of ``world_size`` (a
        :class:`~vqldm.data.loading.BatchSampler` unless a split knows better, e.g. shards read per process)."""
        from .loading import BatchSampler

        return BatchSampler(len(self), batch_size, seed, rank, world_size)

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
        with tqdm(total=n, desc=desc, unit="img", disable=bar_disable(progress), leave=False) as bar:
            for x, y in loader:
                bar.update(len(y))
                yield to_float(x), y


class ArraySplit(ImageSplit):
    """A split held in memory as uint8 N x C x H x W (the small named datasets, tests)."""

    in_memory = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: list[str] | None = None,
                 captions: PackedStrings | None = None):
        self.images, self.labels, self.class_names, self.captions = images, labels, list(class_names or []), captions

    def read(self, i: int, offset: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
        return self.images[i].permute(1, 2, 0).numpy()  # already at the model's geometry: nothing to crop

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long).flatten()
        return to_float(self.images[idx]), self.labels[idx]

    def batches(self, batch_size: int, limit: int | None = None, progress: bool = False, desc: str = "images",
                num_workers: int | None = None):
        n = len(self) if limit is None else min(len(self), limit)
        for start in tqdm(range(0, n, batch_size), desc=desc, disable=bar_disable(progress), leave=False):
            yield self.batch(torch.arange(start, min(n, start + batch_size)))

    def subset(self, n: int) -> "ArraySplit":
        return ArraySplit(self.images[:n], self.labels[:n], self.class_names,
                          self.captions.prefix(n) if self.captions is not None else None)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(str(tuple(self.images.shape)).encode())
        h.update(self.images.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        self._mix_captions(h)
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

    def __init__(self, root: Path, files, stats, labels: torch.Tensor, class_names: list[str], geometry: Geometry,
                 captions: PackedStrings | None = None):
        # numpy arrays, not lists of Python objects: forked DataLoader workers would touch every object's
        # reference count and so copy the pages of a large list into each worker
        self.root, self.files = root, np.asarray(files, dtype=str)
        self.stats = np.asarray(stats, dtype=np.int64).reshape(-1, 2)  # size, mtime_ns
        self.labels, self.class_names, self.geometry, self.captions = labels, list(class_names), geometry, captions

    def read(self, i: int, offset: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
        g = self.geometry
        try:
            return load_image(self.root / str(self.files[i]), g.channels, g.size, g.fit, offset)
        except ValueError as err:
            raise UserError(f"image {str(self.files[i])!r} in {str(self.root)!r} cannot be read any more ({err}); it changed "
                            "after the folder was indexed: run again to re-index") from None

    def subset(self, n: int) -> "FileSplit":
        return FileSplit(self.root, self.files[:n], self.stats[:n], self.labels[:n], self.class_names, self.geometry,
                         self.captions.prefix(n) if self.captions is not None else None)

    def fingerprint(self) -> str:
        """From the index (path, size, mtime, label of each file) and the captions, not from the pixels."""
        h = hashlib.sha256()
        for rel, (size, mtime), label in zip(self.files.tolist(), self.stats.tolist(), self.labels.tolist()):
            h.update(f"{rel}\0{size}\0{mtime}\0{label}\n".encode())
        self._mix_captions(h)
        return h.hexdigest()[:16]

    def item_name(self, i: int) -> str:
        return str(self.files[i])


def read_hf_image(value, geometry: Geometry, offset: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """An undecoded ``datasets`` Image value (``{"bytes", "path"}``) -> uint8 H x W x C at ``geometry``,
    cropped at ``offset`` where larger; ValueError (as :func:`decode_image`) when it is not a usable image."""
    data = value.get("bytes") if isinstance(value, dict) else None
    source = data if data else (value or {}).get("path")
    if not source:
        raise ValueError("empty")
    return fit_array(decode_image(source, geometry.channels), geometry.size, geometry.fit, offset=offset)


class HFSplit(ImageSplit):
    """Rows of a Hugging Face ``datasets.Dataset`` (memory-mapped Arrow); the image column is read
    undecoded and decoded here, so every image goes through the same checks as a file."""

    def __init__(self, dataset, image_column: str, rows: np.ndarray, labels: torch.Tensor, class_names: list[str],
                 geometry: Geometry, name: str, captions: PackedStrings | None = None, caption_fix: str | None = None):
        self.dataset, self.image_column, self.rows = dataset, image_column, rows
        self.labels, self.class_names, self.geometry, self.name = labels, list(class_names), geometry, name
        self.captions, self.caption_fix = captions, caption_fix

    def read(self, i: int, offset: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
        row = int(self.rows[i])
        try:
            return read_hf_image(self.dataset[row][self.image_column], self.geometry, offset)
        except ValueError as err:
            raise UserError(f"row {row} of {self.name!r} is not a usable image ({err}); remove it from the dataset") from None

    def subset(self, n: int) -> "HFSplit":
        return HFSplit(self.dataset, self.image_column, self.rows[:n], self.labels[:n], self.class_names, self.geometry, self.name,
                       self.captions.prefix(n) if self.captions is not None else None, self.caption_fix)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(str(getattr(self.dataset, "_fingerprint", self.name)).encode())
        h.update(self.rows.tobytes())
        h.update(self.labels.numpy().tobytes())
        self._mix_captions(h)
        return h.hexdigest()[:16]

    def item_name(self, i: int) -> str:
        return f"row {int(self.rows[i])}"


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
