"""What ``--config auto`` needs to know about the data, read cheaply.

:func:`describe_data` reads image count, channels, size distribution and class subfolders from file
names and image *headers* of a bounded sample (PIL opens a file without decoding its pixels): at most
500 headers, however large the folder. Tar shards (``shards:``) are described from their index, which
holds every image's size (:mod:`.shards`). Named datasets are known constants. Class subfolders (every
image in one, at least two, not numbered shards like FFHQ's 00000/) make stage 2 class-conditional;
a caption for every image (``metadata.jsonl``, a ``.txt`` beside each image or in each shard sample, an
``hf:`` caption column) makes it text-to-image.
:func:`check_fits` refuses data no config fits (fewer than :data:`MIN_IMAGES` images, images under 8 px)
with a one-line UserError. The stages turn a :class:`DataSummary` into a sized config (their
``choose_*`` functions, with :mod:`vqldm.plumbing.autosize`).
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..plumbing.errors import UserError
from .captions import CAPTION_COLUMNS, caption_files, folder_captions
from .decode import IMAGE_SUFFIXES
from .folder_index import scan_folder
from .sources import HF_PREFIX, SHARDS_PREFIX, hf_layout, hf_load

# Named datasets: (train images, channels, height, width, classes); never downloaded just to be described.
NAMED = {
    "fashion-mnist": (60_000, 1, 28, 28, 10),
    "mnist": (60_000, 1, 28, 28, 10),
    "cifar10": (50_000, 3, 32, 32, 10),
}
SAMPLE_HEADERS = 500  # image headers read to learn modes and sizes (spread over the sorted file list)
MIN_IMAGES = 8  # below this no run is worth sizing: a model would memorise a handful of pictures
MIN_SIDE = 8  # data.image_size must be >= 8 (and smaller images have nothing to compress)
COLOUR_SHARE = 0.1  # colour if at least this share of the sampled images is colour: grey copies of them lose it
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass
class DataSummary:
    """What ``--config auto`` knows about the data: counts from file names, modes and sizes from headers."""

    source: str
    kind: str  # "folder", "hf", "shards" or "named"
    count: int  # image files (by extension) or the named dataset's training images
    channels: int  # 1 or 3
    median_hw: tuple[int, int]
    min_side: int  # shorter sides over the sample
    max_side: int
    median_side: int  # median shorter side: what a resize to a square keeps
    labels: str = "none"  # "folders" when class subfolders will be used
    class_names: list[str] = field(default_factory=list)
    subfolders: int = 0  # first-level subfolders holding images (classes or not)
    sampled: int = 0  # headers read (folders)
    captions: int = 0  # images with a non-empty caption (hf: every row, when it has a caption column)

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.labels != "none" else 0

    @property
    def captioned(self) -> bool:
        """Every image has a caption: the data can train a text-to-image model."""
        return self.count > 0 and self.captions >= self.count

    def describe(self) -> str:
        """``1,432 RGB images (median 64x64, no labels)``"""
        colour = "RGB" if self.channels == 3 else "grayscale"
        h, w = self.median_hw
        if self.num_classes:
            labels = f"{self.num_classes} classes"
        elif self.subfolders > 1 and self.kind == "folder":
            labels = f"no labels; {self.subfolders} subfolders"
        else:
            labels = "no labels"
        if self.captioned:
            labels += ", captioned"
        elif self.captions:
            labels += f", captions for only {self.captions:,}"
        return f"{self.count:,} {colour} image{'s' if self.count != 1 else ''} (median {h}x{w}, {labels})"


# ----------------------------------------------------------------------------- describing the data
def _looks_like_classes(names: list[str]) -> bool:
    """Class subfolders, not shards: FFHQ-style numbered chunks (00000/, 01000/, ...) are not classes."""
    if len(names) < 2:
        return False
    shards = all(n.isdigit() for n in names) and len({len(n) for n in names}) == 1 and len(names[0]) >= 3
    return not shards


def describe_data(source: str | os.PathLike | None, labels: str | None = None, streaming: bool = False) -> DataSummary:
    """Summarise ``source`` (an image folder, ``hf:NAME``, ``shards:SPEC`` or a named dataset) for sizing a run.

    ``labels``: "folders" or "none" as the user asked, or None to decide: first-level subfolders are
    classes when every image is in one, there are at least two, and they are not numbered shards.
    ``streaming`` (``data.streaming``): an ``hf:`` dataset is described from its stream, not downloaded.
    """
    if not source:
        raise UserError("--config auto needs --data: an image folder, or one of " + ", ".join(NAMED))
    if str(source).startswith(HF_PREFIX):
        return _describe_hf(str(source)[len(HF_PREFIX):], labels, streaming)
    if str(source).startswith(SHARDS_PREFIX):
        return _describe_shards(str(source)[len(SHARDS_PREFIX):], labels)
    path = Path(source).expanduser()
    if not path.exists():
        name = str(source).lower()
        if name in NAMED:
            count, channels, h, w, classes = NAMED[name]
            use = "none" if labels == "none" else "folders"  # named datasets come labelled
            return DataSummary(name, "named", count, channels, (h, w), min(h, w), min(h, w), min(h, w),
                               labels=use, class_names=[str(i) for i in range(classes)])
        raise UserError(f"data path {str(source)!r} not found; pass an existing image folder or one of: {', '.join(NAMED)}")
    if not path.is_dir():
        raise UserError(f"--data {str(source)!r} is a file, not a folder of images; pass its folder or a named dataset")

    files = scan_folder(path)
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise UserError(f"no images in {str(path)!r} (PNG, JPEG, WebP, ...; subfolders are searched); --config auto sizes a run from them")
    firsts = [p.relative_to(path).parts for p in images]
    subfolders = sorted({parts[0] for parts in firsts if len(parts) > 1})
    loose = sum(1 for parts in firsts if len(parts) == 1)
    if labels == "folders":
        if not subfolders:
            raise UserError(f"--labels folders needs one subfolder per class in {str(path)!r}, found none")
        use = "folders"
    elif labels == "none":
        use = "none"
    else:
        use = "folders" if loose == 0 and _looks_like_classes(subfolders) else "none"

    k = min(SAMPLE_HEADERS, len(images))
    picks = sorted({round(i * (len(images) - 1) / max(1, k - 1)) for i in range(k)})
    sizes, colour = [], 0
    for i in picks:
        try:
            with Image.open(images[i]) as img:  # reads the header only; pixels stay on disk
                w, h = img.size
                mode = img.mode
        except Exception:  # unreadable files are the loader's to skip and count
            continue
        sizes.append((h, w))
        colour += mode not in GRAY_MODES
    if not sizes:
        raise UserError(f"none of the {len(picks)} sampled files in {str(path)!r} opens as an image; check the files")
    sides = [min(h, w) for h, w in sizes]
    return DataSummary(
        source=str(path), kind="folder", count=len(images),
        channels=3 if colour >= COLOUR_SHARE * len(sizes) else 1,
        median_hw=(int(statistics.median_low(h for h, _ in sizes)), int(statistics.median_low(w for _, w in sizes))),
        min_side=min(sides), max_side=max(sides), median_side=int(statistics.median_low(sides)),
        labels=use, class_names=subfolders if use == "folders" else [], subfolders=len(subfolders), sampled=len(sizes),
        captions=_folder_captions(path, files, images),
    )


def _folder_captions(root: Path, files: list[Path], images: list[Path]) -> int:
    """How many of ``images`` have a non-empty caption (read only when the folder holds caption files)."""
    rels = [p.relative_to(root).as_posix() for p in files]
    if not caption_files(rels):
        return 0
    found, _ = folder_captions(root, rels)
    return sum(1 for p in images if found.get(p.relative_to(root).as_posix()))


def _describe_hf(name: str, labels: str | None, streaming: bool = False) -> DataSummary:
    """A Hugging Face dataset: rows of the training split, image headers of a sample (the bytes are read,
    not decoded; a stream: its first rows), its ClassLabel column as classes unless ``--labels none``."""
    import io
    from itertools import islice

    import datasets as hf

    layout = hf_layout(name, hf_load(name, streaming=streaming))
    if streaming:
        from .streaming import train_stream

        train, n = train_stream(name, layout)
        values = [row[layout.image_column] for row in islice(train, SAMPLE_HEADERS)]
    else:
        train = layout.splits[layout.train].cast_column(layout.image_column, hf.Image(decode=False))
        n = len(train)
        k = min(SAMPLE_HEADERS, n)
        values = [train[i][layout.image_column] for i in sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})]
    sizes, colour = [], 0
    for value in values:
        value = value or {}
        try:
            with Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")) as img:
                w, h = img.size
                colour += img.mode not in GRAY_MODES
        except Exception:  # unreadable rows are the loader's to report
            continue
        sizes.append((h, w))
    if not sizes:
        raise UserError(f"none of the sampled rows of hf:{name} opens as an image; check the dataset")
    sides = [min(h, w) for h, w in sizes]
    use = "folders" if layout.class_names and labels != "none" else "none"
    split = layout.splits[layout.train]
    columns = getattr(split, "column_names", None) or list(getattr(split, "features", None) or {})
    return DataSummary(
        source=HF_PREFIX + name, kind="hf", count=n, channels=3 if colour >= COLOUR_SHARE * len(sizes) else 1,
        median_hw=(int(statistics.median_low(h for h, _ in sizes)), int(statistics.median_low(w for _, w in sizes))),
        min_side=min(sides), max_side=max(sides), median_side=int(statistics.median_low(sides)),
        labels=use, class_names=layout.class_names if use == "folders" else [], sampled=len(sizes),
        captions=n if any(c in columns for c in CAPTION_COLUMNS) else 0,  # each row's is checked when training reads it
    )


def _describe_shards(spec: str, labels: str | None) -> DataSummary:
    """Tar shards: their index (shards.json, or the cached scan, which decode-checks every image once and
    records its size): sample count, sizes and colour of every image, classes from the cls members
    (used unless ``--labels none``; names from shards.json, else the numbers)."""
    from .shards import index_shards

    index = index_shards(spec, log=lambda msg: None)
    rows = [row for record in index.records for row in record.rows]
    if not rows:
        raise UserError(f"no usable image in the shards of {spec!r}; --config auto sizes a run from them")
    sizes = [(row[6], row[7]) for row in rows]
    colour = sum(1 for row in rows if row[8] == 3)
    found = sorted({row[4] for row in rows if row[4] is not None})
    if labels == "folders" and not found:
        raise UserError(f"--labels folders needs a .cls member (the class number) per sample in the shards of {spec!r}, found none; "
                        "write them with `vqldm shard FOLDER OUT --labels folders`")
    every = all(row[4] is not None for row in rows)
    use = "folders" if labels == "folders" or (labels is None and every and len(found) > 1) else "none"
    names = (index.class_names or [str(i) for i in range(found[-1] + 1)]) if use == "folders" else []
    sides = [min(h, w) for h, w in sizes]
    return DataSummary(
        source=SHARDS_PREFIX + spec, kind="shards", count=len(rows), channels=3 if colour >= COLOUR_SHARE * len(rows) else 1,
        median_hw=(int(statistics.median_low(h for h, _ in sizes)), int(statistics.median_low(w for _, w in sizes))),
        min_side=min(sides), max_side=max(sides), median_side=int(statistics.median_low(sides)),
        labels=use, class_names=names, sampled=len(rows), captions=sum(1 for row in rows if row[5]),
    )


def check_fits(summary: DataSummary) -> None:
    """The data no config fits: a one-line UserError with what to do instead."""
    if summary.count < MIN_IMAGES:
        raise UserError(
            f"--config auto: {summary.count} image{'s' if summary.count != 1 else ''} in {summary.source!r} is too few to size a "
            f"run for (at least {MIN_IMAGES}; a few hundred for a useful model); add images, or pass a preset such as --config tiny"
        )
    if summary.median_side < MIN_SIDE:
        h, w = summary.median_hw
        raise UserError(
            f"--config auto: the images in {summary.source!r} are too small (median {h}x{w}; the smallest model takes "
            f"{MIN_SIDE} px); upscale them to at least 16 px, or pass a preset with --set data.image_size=16"
        )


