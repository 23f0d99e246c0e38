"""A Hugging Face dataset read as a stream (``--data hf:NAME`` with ``data.streaming``), for datasets too
large to download: nothing is fetched up front, images are read, decoded and fitted by DataLoader
workers as training needs them.

Training order (:meth:`StreamedSplit.train_batches`). Epoch ``e`` on process ``rank`` of ``world`` is the
stream ``split_dataset_by_node(ds.shuffle(seed, SHUFFLE_BUFFER), rank, world)`` after ``set_epoch(e)``
(``datasets`` reshuffles the shard order and reseeds its shuffle buffer per epoch), read by ``W``
DataLoader workers (``datasets`` gives worker ``w`` the shards ``w, w + W, ...``; the loader takes one
chunk of ``batch_size`` images from each worker in turn). An epoch is ``steps_per_epoch = rows //
(batch_size * world)`` batches on every process (the map-style order's drop-last rule, so every process
counts the same epochs); a process whose share of an epoch is shorter (shards of unequal size) reads its
share again from the start. Crops and flips are drawn from (seed, epoch, the image's content key).

Resume: a run resumed at step ``s`` replays epoch ``s // steps_per_epoch`` and skips its first
``(s % steps_per_epoch) * batch_size`` images without decoding them (each worker knows which of its
chunks are surely consumed; the few it cannot tell are decoded and dropped), so it sees exactly the
batches an uninterrupted run sees -- for the same process count, worker count (``data.num_workers``) and
batch size. The skip reads up to one epoch's share of bytes again. ``IterableDataset.state_dict`` would
not: it restores the shard position but not the shuffle buffer, whose images are lost (measured with
datasets 5.2: resumed after 5 of 40 rows with a 16-row buffer, 11 rows never came), so it is not exact.
With another process or worker count the order of the resumed epoch differs (some images of it are seen
twice, some not at all); later epochs are whole again.

Held-out images (:func:`load_hf_stream`): the first ``data.stream_holdout_images`` rows of the test (or
validation) split, in the dataset's order, decoded into memory (:class:`ArraySplit`), since evaluation and
the training loop's image grids read them by index. A dataset without a held-out split gives up
``min(stream_holdout_images, holdout_fraction * rows)`` rows of its training stream (the first ones of a
fixed-seed shuffle); training skips every image with the same content key.

A stream with fewer shards than the processes' workers is ``reshard``-ed (parquet: one shard per row
group). Each epoch starts its workers afresh. What needs random access or a row count fixed up front --
``read``/``batch`` by index, the labels as one tensor, a latent cache's fingerprint -- is a one-line
UserError that says to download the dataset instead.
"""

from __future__ import annotations

import hashlib
from itertools import islice
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ..plumbing.errors import UserError
from ..plumbing.runs import bar_disable
from .config import DataConfig
from .folder_index import default_workers
from .loading import BatchSampler, view_draw
from .sources import HF_PREFIX, hf_layout, hf_load
from .splits import ArraySplit, Datasets, Geometry, ImageSplit, chw_tensor, read_hf_image, to_float

SHUFFLE_BUFFER = 1000  # undecoded rows each worker shuffles among (datasets' default; ~100 MB of 100 KB JPEGs)
HOLDOUT_SEED = 0  # the held-out rows of a dataset without a test split do not change with train.seed
MAX_SHARDS = 64  # a save_to_disk folder is streamed in at most this many shards (powers of two: 2, 4, 8 ... processes take whole shards)
RANDOM_ACCESS = "drop data.streaming (--set data.streaming=false) to download the dataset"


def content_key(value) -> int:
    """A 64-bit key of an undecoded Image value (its bytes, else its path): the same in every process,
    worker and order; it seeds the image's crops and flips and marks held-out images."""
    data = value.get("bytes") if isinstance(value, dict) else None
    if not data:
        data = str((value or {}).get("path") if isinstance(value, dict) else value).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class StreamSampler(BatchSampler):
    """The batch order's shape for a streamed split: ``batch_size`` per process, ``steps_per_epoch`` the
    same on every process, as :class:`~vqldm.data.loading.BatchSampler` counts them; it draws no indices
    (the stream itself is read by :meth:`StreamedSplit.train_batches`)."""

    def batches(self, start_step: int = 0):
        raise TypeError("a streamed split has no index order; read it with train_batches")


class _Chunks(torch.utils.data.IterableDataset):
    """One pass over a stream as chunks of ``chunk`` decoded images: {"count", "images" (uint8 n x C x S x S),
    "labels"}; a chunk surely inside the first ``skip`` images of the pass is {"count"} only (not decoded).

    Worker ``w`` of ``W`` yields its ``j``-th chunk in the loader's turn ``j * W + w``, so it starts at image
    ``(j * W + w) * chunk`` at the latest (earlier once a worker has run out): one ending by ``skip`` is surely
    skipped. A row that is not a usable image is {"error"}, raised by the training process as one line."""

    def __init__(self, stream, split: "StreamedSplit", chunk: int, skip: int, views: tuple | None):
        self.stream, self.split, self.chunk, self.skip, self.views = stream, split, chunk, skip, views

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        s = self.split
        rows, j = [], 0
        for record in self.stream:  # in a worker, datasets reads this worker's shards only
            value = record[s.image_column]
            key = content_key(value)
            if key in s.exclude:
                continue
            label = record[s.label_column] if s.label_column else None
            rows.append((value, key, -1 if label is None else int(label)))
            if len(rows) == self.chunk:
                yield self._emit(rows, (j * workers + w + 1) * self.chunk <= self.skip)
                rows, j = [], j + 1
        if rows:
            yield self._emit(rows, (j * workers + w + 1) * self.chunk <= self.skip)

    def _emit(self, rows: list, skipped: bool) -> dict:
        if skipped:
            return {"count": len(rows)}
        images = []
        for value, key, _ in rows:
            offset, mirror = (0.5, 0.5), False
            if self.views:  # training: random crop / flip
                seed, epoch, crop, flip = self.views
                offset, mirror = view_draw(seed, epoch, key, crop, flip)
            try:
                arr = read_hf_image(value, self.split.geometry, offset)
            except ValueError as err:
                where = value.get("path") if isinstance(value, dict) and value.get("path") else "a row"
                return {"count": len(rows),
                        "error": f"{where} of {self.split.name!r} is not a usable image ({err}); remove it from the dataset"}
            images.append(chw_tensor(arr[:, ::-1] if mirror else arr))
        return {"count": len(rows), "images": torch.stack(images), "labels": torch.tensor([r[2] for r in rows], dtype=torch.long)}


def _rebatch(chunks: Iterator[tuple[torch.Tensor, torch.Tensor]], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 chunks of any size -> (images in [-1, 1], labels) batches of ``batch_size``, the last one shorter."""
    held, have = [], 0
    for x, y in chunks:
        if not held and len(y) == batch_size:  # the usual case: a worker's chunk is a batch
            yield to_float(x), y
            continue
        held.append((x, y))
        have += len(y)
        while have >= batch_size:
            xs, ys = torch.cat([h[0] for h in held]), torch.cat([h[1] for h in held])
            yield to_float(xs[:batch_size]), ys[:batch_size]
            held, have = ([(xs[batch_size:], ys[batch_size:])] if have > batch_size else []), have - batch_size
    if have:
        yield to_float(torch.cat([h[0] for h in held])), torch.cat([h[1] for h in held])


class StreamedSplit(ImageSplit):
    """The training images of a streamed ``datasets.IterableDataset`` (image column undecoded): read in
    order, never by index. ``len`` is the row count the dataset records (else counted once), less the
    held-out rows."""

    streaming = True

    def __init__(self, dataset, image_column: str, label_column: str | None, class_names: list[str], geometry: Geometry,
                 name: str, num_rows: int, exclude: frozenset = frozenset()):
        self.dataset, self.image_column, self.label_column = dataset, image_column, label_column
        self.class_names, self.geometry, self.name = list(class_names), geometry, name
        self.num_rows, self.exclude = num_rows, frozenset(exclude)

    def __len__(self) -> int:
        return self.num_rows

    @property
    def labels(self) -> torch.Tensor:
        raise UserError(f"the labels of the streamed {self.name!r} are read with its images, not up front; {RANDOM_ACCESS}")

    def read(self, i: int, offset: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
        raise UserError(f"the streamed {self.name!r} is read in order, not image by image; {RANDOM_ACCESS}")

    def batch(self, indices):
        raise UserError(f"the streamed {self.name!r} is read in order, not image by image; {RANDOM_ACCESS}")

    def subset(self, n: int) -> "StreamedSplit":
        """The first ``n`` rows of the stream (``IterableDataset.take``: the shard order stays fixed)."""
        return StreamedSplit(self.dataset.take(n), self.image_column, self.label_column, self.class_names, self.geometry,
                             self.name, min(n, self.num_rows), self.exclude)

    def fingerprint(self) -> str:
        raise UserError(f"a latent cache is built from a downloaded dataset, not from the streamed {self.name!r}; {RANDOM_ACCESS}")

    def batch_sampler(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> StreamSampler:
        return StreamSampler(len(self), batch_size, seed, rank, world_size)

    def sharded(self, num_workers: int | None, world_size: int = 1) -> tuple[object, int]:
        """The stream, split into more shards (parquet row groups: ``reshard``) where it has fewer than the
        processes' workers, and the DataLoader workers of one process: as configured (None:
        :func:`default_workers`), at most the shards that process reads (datasets leaves the others idle)."""
        wanted = default_workers() if num_workers is None else num_workers
        stream = self.dataset
        if stream.num_shards < max(1, wanted) * world_size:
            stream = stream.reshard()
        shards = stream.num_shards
        per_process = shards // world_size if shards % world_size == 0 else shards  # datasets' "auto" node split
        return stream, max(0, min(wanted, per_process))

    def _chunks(self, stream, start: int, stop: int, chunk: int, workers: int, views: tuple | None,
                pin_memory: bool = False, cycle: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Images ``start`` .. ``stop`` of ``stream`` read by ``workers`` processes (``cycle``: the stream
        read again from its start where it ends before ``stop``), as uint8 chunks."""
        pos, base = start, 0  # next image to yield; where the current pass starts in the cycled stream
        while pos < stop:
            skip = pos - base
            loader = torch.utils.data.DataLoader(
                _Chunks(stream, self, chunk, skip, views), batch_size=None, num_workers=workers, pin_memory=pin_memory,
                prefetch_factor=4 if workers else None, generator=torch.Generator().manual_seed(0))
            seen = 0
            for item in loader:
                if "error" in item:
                    raise UserError(item["error"])
                n = int(item["count"])
                lo, hi = max(0, skip - seen), min(n, stop - base - seen)
                if hi > lo:
                    if "images" not in item:  # the loader's turn order is what the skip relies on
                        raise RuntimeError("a streamed chunk was skipped that training needs; the DataLoader's order changed")
                    yield item["images"][lo:hi], item["labels"][lo:hi]
                    pos = base + seen + hi
                seen += n
                if base + seen >= stop:
                    break
            else:  # this pass has ended
                if seen == 0:
                    raise UserError(f"the stream of {self.name!r} has no images for this process; pass a dataset with "
                                    "at least as many rows as processes, or fewer processes")
                if not cycle:
                    return
                base += seen
                base += max(0, pos - base) // seen * seen  # resuming past several passes: skip them whole
            del loader

    def train_batches(self, sampler: StreamSampler, start_step: int, cfg: DataConfig, seed: int,
                      pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless training batches (images in [-1, 1], labels) from step ``start_step`` on (module docstring)."""
        from datasets.distributed import split_dataset_by_node

        b, k = sampler.batch_size, sampler.steps_per_epoch
        epoch, within = divmod(start_step, k)
        stream, workers = self.sharded(cfg.num_workers, sampler.world_size)
        shuffled = stream.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
        if sampler.world_size > 1:
            shuffled = split_dataset_by_node(shuffled, sampler.rank, sampler.world_size)
        while True:
            shuffled.set_epoch(epoch)
            views = (seed, epoch, cfg.random_crop, cfg.random_flip) if cfg.random_crop or cfg.random_flip else None
            yield from _rebatch(self._chunks(shuffled, within * b, k * b, b, workers, views, pin_memory, cycle=True), b)
            epoch, within = epoch + 1, 0

    def batches(self, batch_size: int, limit: int | None = None, progress: bool = False, desc: str = "images",
                num_workers: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images in [-1, 1], labels) of the first ``limit`` images (all when None) in the stream's own order,
        centred, ``batch_size`` at a time, decoded by DataLoader workers."""
        n = len(self) if limit is None else min(len(self), limit)
        stream, workers = self.sharded(num_workers)
        chunks = self._chunks(stream, 0, n, batch_size, workers, None)
        with tqdm(total=n, desc=desc, unit="img", disable=bar_disable(progress), leave=False) as bar:
            for x, y in _rebatch(chunks, batch_size):
                bar.update(len(y))
                yield x, y


class _HeldOutRows(torch.utils.data.Dataset):
    """Undecoded held-out rows, decoded (centred) by DataLoader workers; item: (image or None, label, error)."""

    in_memory = False

    def __init__(self, rows: list, geometry: Geometry, name: str):
        self.rows, self.geometry, self.name = rows, geometry, name

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        value, label = self.rows[i]
        try:
            return chw_tensor(read_hf_image(value, self.geometry)), label, ""
        except ValueError as err:
            return None, label, f"a held-out row of {self.name!r} is not a usable image ({err}); remove it from the dataset"


def _decode_rows(rows: list, geometry: Geometry, name: str, num_workers: int | None) -> torch.Tensor:
    """uint8 N x C x S x S of undecoded (value, label) rows, in order."""
    if not rows:
        return torch.empty(0, geometry.channels, geometry.size, geometry.size, dtype=torch.uint8)
    workers = min(default_workers() if num_workers is None else num_workers, len(rows) // 64)  # a few: in this process
    loader = torch.utils.data.DataLoader(_HeldOutRows(rows, geometry, name), batch_size=64, num_workers=workers,
                                         collate_fn=list, generator=torch.Generator().manual_seed(0))
    images = []
    for items in loader:
        for image, _, error in items:
            if error:
                raise UserError(error)
            images.append(image)
    return torch.stack(images)


def _as_stream(ds, image_column: str) -> tuple[object, int | None]:
    """A split as an ``IterableDataset`` with its image column undecoded, and its row count when known
    (a ``save_to_disk`` split: exactly; a streamed one: from the dataset's split info, if recorded)."""
    import datasets as hf

    if isinstance(ds, hf.Dataset):
        n = len(ds)
        shards = 1 << min(MAX_SHARDS.bit_length() - 1, max(0, n.bit_length() - 1))  # a power of two <= n
        return ds.cast_column(image_column, hf.Image(decode=False)).to_iterable_dataset(num_shards=shards), n
    n = None
    splits = getattr(ds.info, "splits", None)
    if splits and ds.split is not None and str(ds.split) in splits:
        n = splits[str(ds.split)].num_examples or None
    return ds.cast_column(image_column, hf.Image(decode=False)), n


def train_stream(name: str, layout, log: Callable[[str], None] = print, limit: int | None = None) -> tuple[object, int]:
    """The training split of a streamed dataset (``hf_layout`` of it; its first ``limit`` rows), image column
    undecoded, and its row count: recorded by the dataset, else counted once (no image is decoded)."""
    train, n = _as_stream(layout.splits[layout.train], layout.image_column)
    if limit is not None and (n is None or limit < n):  # a quick run (data.max_images): the first rows
        train, n = train.take(limit), (None if n is None else limit)
    if n is None:
        log(f"hf:{name}: its {layout.train!r} split does not record its size; counting its rows once (no image is decoded)")
        n = sum(1 for _ in train.select_columns([layout.image_column]))
    if n == 0:
        raise UserError(f"the {layout.train!r} split of the Hugging Face dataset {name!r} is empty; pass another dataset")
    return train, n


def load_hf_stream(name: str, cfg: DataConfig, log: Callable[[str], None] = print) -> Datasets:
    """``hf:NAME`` with ``data.streaming``: the training stream and the held-out images in memory (module docstring)."""
    layout = hf_layout(name, hf_load(name, cfg.hf_config, streaming=True))
    geometry, source = Geometry.of(cfg), HF_PREFIX + name
    image, label = layout.image_column, layout.label_column
    train, n = train_stream(name, layout, log, cfg.max_images)  # max_images: held-out rows come out of these too

    def row(record) -> tuple:
        value = record[label] if label else None
        return record[image], -1 if value is None else int(value)

    exclude: frozenset = frozenset()
    if layout.holdout is not None:
        held_stream, _ = _as_stream(layout.splits[layout.holdout], image)
        rows = [row(r) for r in islice(held_stream, cfg.stream_holdout_images)]
    else:
        count = min(cfg.stream_holdout_images, round(cfg.holdout_fraction * n), n - 1)
        if count < 1:  # tiny or holdout_fraction 0: one image, shared with training (as for folders)
            rows = [row(r) for r in islice(train, 1)]
        else:
            rows = [row(r) for r in islice(train.shuffle(seed=HOLDOUT_SEED, buffer_size=SHUFFLE_BUFFER), count)]
            exclude = frozenset(content_key(value) for value, _ in rows)
            n -= len(exclude)
    held = ArraySplit(_decode_rows(rows, geometry, source, cfg.num_workers), torch.tensor([r[1] for r in rows], dtype=torch.long),
                      layout.class_names)
    split = StreamedSplit(train, image, label, layout.class_names, geometry, source, n, exclude)
    return Datasets(train=split, holdout=held, source=source)
