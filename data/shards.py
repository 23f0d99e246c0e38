"""Tar shards (``--data shards:...``): a dataset as webdataset-layout ``.tar`` files, read map-style.

Layout (webdataset): the members of one sample share a *key*, the member's path up to the first dot
of its file name (``train/00042.jpg``, ``train/00042.cls``, ``train/00042.txt`` are sample
``train/00042``). The image is the member with an image extension (jpg, jpeg, png, webp, bmp, gif,
tif, tiff); ``cls`` holds the class label as decimal text, ``txt`` a caption, ``json`` anything else
(not read). A sample without an image is skipped and counted.

Where the shards are: ``shards:DIR`` (every ``*.tar`` in a folder, sorted), ``shards:PATTERN`` with brace
ranges and lists (``train-{000000..000127}.tar``, ``{train,extra}-{0..9}.tar``) or glob characters, a
single ``.tar``; each a local path or a URL: ``http(s)://`` (read with the standard library: a
streamed GET to index, a ``Range`` request per image) or any other fsspec URL (``s3://``, ``gs://``,
``hf://``, ``file://``; its filesystem package installed).

The index: one entry per sample (shard, byte offset and size of the image's data, key, extension,
label, caption, image size). It comes from ``shards.json`` beside the shards when ``vqldm shard``
wrote them (no scan at all), else from one sequential pass over each shard (a seeking pass over the
tar headers for a local file, ``tarfile``'s streaming mode for a URL), cached in
``<cache>/shard-index/`` keyed by the shard's path or URL, size and modification time, as the folder
index is (:mod:`.folder_index`). Decode check: that pass also decodes every image once (in DataLoader
workers, one shard per worker), so a corrupt image is skipped with a warning and counted before
training, never met by it -- the folder index's guarantee. It reads each foreign shard in full once;
shards written by ``vqldm shard`` hold only images the folder index already decoded, and their
``shards.json`` says so.

Reading: :class:`ShardSplit` reads sample ``i`` as one ranged read of its image's bytes (a seek in an
open file: each process keeps a few shards open; a byte range of a URL), decodes and fits it as
:class:`~vqldm.data.splits.FileSplit` does. It pickles without its open files, so DataLoader workers
(forked or spawned) each open their own.

Order: :class:`ShardBatchSampler`. Each epoch the shards are permuted from (seed, epoch) and dealt to
the processes, whole, balanced by sample count; each process permutes the samples of its shards from
(seed, epoch, rank). Every process runs the same number of steps an epoch: the least any process can
be dealt, so an epoch may leave out the surplus of the larger shares (a different surplus each epoch).

Held-out split: a stable hash of ``key.ext`` (for shards written from a folder: the image's path
in that folder, so the same images are held out as when training on the folder itself). Labels: the
``cls`` members when ``data.labels`` is not ``none``; class names from ``shards.json``, else the
label numbers as text. Captions (``data.captions``): the ``txt`` members, read into the index.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import math
import os
import posixpath
import re
import tarfile
import urllib.error
import urllib.request
from collections import Counter, OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..plumbing.checkpoint import AtomicDir, atomic_write_json
from ..plumbing.errors import UserError
from ..plumbing.runs import bar_disable, progress_bar
from .captions import PackedStrings, folder_captions
from .config import DataConfig
from .decode import IMAGE_SUFFIXES, decode_image, fit_array, probe_image
from .folder_index import SkippedFile, cache_dir, default_workers, index_folder, skipped_summary
from .sources import SHARDS_PREFIX, _in_holdout
from .splits import Datasets, Geometry, ImageSplit

INDEX_NAME = "shards.json"  # written by `vqldm shard` beside the shards
INDEX_FORMAT = "vqldm-shards"
SCAN_FORMAT = "vqldm-shard-scan"  # one cached scan of one shard
INDEX_VERSION = 1
IMAGE_EXTS = {s[1:] for s in IMAGE_SUFFIXES}
MAX_SHARDS = 1_000_000  # a brace range longer than this is a typo
OPEN_SHARDS = 16  # open files a process keeps (an LRU): a few of its shards, cheap on file descriptors
EXAMPLE = "shards:/data/train-{000000..000127}.tar"

# A sample row of the index: key, image extension, byte offset of the image data, its size, the cls label
# (None: no cls member), the caption ("" : none), and the image's height, width and colour bands.
Row = tuple  # (str, str, int, int, int | None, str, int, int, int)


# ----------------------------------------------------------------------------- where the shards are
def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: ``a-{000..002}.tar`` -> a-000.tar, a-001.tar, a-002.tar (zero-padded
    to the wider end when either end has a leading zero), ``{x,y}`` -> x, y; nested and repeated groups
    expand left to right. A group that is neither stays as written."""
    start = pattern.find("{")
    if start < 0:
        if "}" in pattern:
            raise UserError(f"unbalanced '}}' in the shard pattern {pattern!r}; write ranges as {{000000..000127}}")
        return [pattern]
    depth, parts, begin = 0, [], start + 1
    for pos in range(start, len(pattern)):
        ch = pattern[pos]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                parts.append(pattern[begin:pos])
                break
        elif ch == "," and depth == 1:
            parts.append(pattern[begin:pos])
            begin = pos + 1
    else:
        raise UserError(f"unbalanced '{{' in the shard pattern {pattern!r}; write ranges as {{000000..000127}}")
    head, tails = pattern[:start], expand_braces(pattern[pos + 1 :])
    m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", parts[0]) if len(parts) == 1 else None
    if m:
        a, b = m.groups()
        count = abs(int(b) - int(a)) + 1
        if count > MAX_SHARDS:
            raise UserError(f"the range {{{parts[0]}}} in {pattern!r} names {count:,} shards (at most {MAX_SHARDS:,}); check the numbers")
        padded = any(len(e.lstrip("-")) > 1 and e.lstrip("-").startswith("0") for e in (a, b))
        width = max(len(a), len(b)) if padded else 0
        step = 1 if int(b) >= int(a) else -1
        options = [f"{i:0{width}d}" for i in range(int(a), int(b) + step, step)]
    elif len(parts) == 1:  # "{x}": not a group
        options = ["{" + parts[0] + "}"]
    else:
        options = [e for part in parts for e in expand_braces(part)]
    return [head + o + t for o in options for t in tails]


def is_url(location: str) -> bool:
    return "://" in location


def _is_http(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _fsspec(location: str):
    """(filesystem, path) of a non-HTTP URL; a UserError when its filesystem package is missing."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as err:
        raise UserError(f"cannot open {location!r} ({err}); install the filesystem package for that URL or copy the shards locally") from None


def shard_locations(spec: str) -> list[str]:
    """The shards ``spec`` names, in order: a folder's ``*.tar`` (sorted), a brace pattern's expansion,
    a glob's matches (sorted), or one ``.tar``; local paths are made absolute."""
    if not spec:
        raise UserError(f"--data shards: needs a folder or a pattern after 'shards:', e.g. {EXAMPLE}")
    if "{" in spec or "}" in spec:
        names = list(dict.fromkeys(expand_braces(spec)))
        if is_url(spec):
            return names  # each is checked when it is opened
        missing = [n for n in names if not Path(n).expanduser().is_file()]
        if len(missing) == len(names):
            raise UserError(f"no shard matches {spec!r} (none of its {len(names):,} names exists, e.g. {names[0]!r}); "
                            "check the folder and the numbers (and their zero padding) in the braces")
        if missing:
            raise UserError(f"{len(missing):,} of the {len(names):,} shards of {spec!r} do not exist (first: {missing[0]!r}); "
                            "fix the range in the braces")
        return [str(Path(n).expanduser().absolute()) for n in names]
    if is_url(spec):
        if spec.endswith(".tar") and not glob.has_magic(spec):
            return [spec]
        if _is_http(spec):
            raise UserError(f"an HTTP folder cannot be listed: {spec!r}; name the shards with a brace pattern, "
                            "e.g. shards:https://host/data/train-{000000..000127}.tar")
        fs, path = _fsspec(spec)
        pattern = path if glob.has_magic(path) else path.rstrip("/") + "/*.tar"
        found = sorted(fs.glob(pattern))
        if not found:
            raise UserError(f"no .tar shards at {spec!r}; pass a folder of webdataset .tar shards or a pattern")
        return [fs.unstrip_protocol(p) for p in found]
    path = Path(spec).expanduser()
    if glob.has_magic(spec):
        found = sorted(p for p in glob.glob(str(path)) if os.path.isfile(p))
        if not found:
            raise UserError(f"no shard matches {spec!r}; check the folder and the pattern")
        return [str(Path(p).absolute()) for p in found]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix == ".tar" and p.is_file())
        if not found:
            raise UserError(f"no .tar shards in {spec!r}; pass a folder of webdataset .tar shards "
                            "(`vqldm shard FOLDER OUT` writes them from an image folder)")
        return [str(p.absolute()) for p in found]
    if path.is_file():
        return [str(path.absolute())]
    raise UserError(f"shard path {spec!r} not found; pass a folder of .tar shards or a pattern such as {EXAMPLE}")


def _http_error(location: str, err: Exception) -> UserError:
    if isinstance(err, urllib.error.HTTPError):
        return UserError(f"cannot read {location!r} (HTTP {err.code} {err.reason}); check the URL")
    return UserError(f"cannot reach {location!r} ({getattr(err, 'reason', err)}); check the URL and the network")


def _stat(location: str) -> tuple[int | None, str]:
    """(size in bytes or None where the server does not say, a modification stamp or "")."""
    try:
        if not is_url(location):
            st = os.stat(location)
            return st.st_size, str(st.st_mtime_ns)
        if _is_http(location):
            with urllib.request.urlopen(urllib.request.Request(location, method="HEAD"), timeout=60) as resp:
                size = resp.headers.get("Content-Length")
                return (int(size) if size else None), resp.headers.get("Last-Modified") or resp.headers.get("ETag") or ""
        fs, path = _fsspec(location)
        info = fs.info(path)
        stamp = next((info[k] for k in ("mtime", "LastModified", "last_modified", "updated", "ETag") if info.get(k)), "")
        return info.get("size"), str(stamp)
    except (urllib.error.URLError, TimeoutError) as err:
        raise _http_error(location, err) from None
    except FileNotFoundError:
        raise UserError(f"shard {location!r} not found; check the path or URL") from None
    except OSError as err:
        raise UserError(f"cannot open shard {location!r} ({err}); check the path or URL") from None


@contextmanager
def _sequential(location: str):
    """A binary stream of the whole file, read front to back."""
    try:
        if not is_url(location):
            fh = open(location, "rb")
        elif _is_http(location):
            fh = urllib.request.urlopen(location, timeout=60)
        else:
            import fsspec

            fh = fsspec.open(location, "rb").open()
    except (urllib.error.URLError, TimeoutError) as err:
        raise _http_error(location, err) from None
    except OSError as err:
        raise UserError(f"cannot open shard {location!r} ({err}); check the path or URL") from None
    with fh:
        yield fh


def _read_small(location: str) -> bytes | None:
    """A small file's bytes (the index file beside the shards), or None where it does not exist."""
    try:
        if not is_url(location):
            return Path(location).read_bytes() if os.path.isfile(location) else None
        if _is_http(location):
            with urllib.request.urlopen(location, timeout=60) as resp:
                return resp.read()
        fs, path = _fsspec(location)
        return fs.cat_file(path) if fs.exists(path) else None
    except (OSError, urllib.error.URLError, UserError):
        return None  # no index file: the shards are scanned


class _RangeReader:
    """Byte ranges of shards, for one process: an LRU of open local files, one ``Range`` request per
    HTTP read, an fsspec filesystem's ``cat_file`` otherwise."""

    def __init__(self):
        self.pid = os.getpid()
        self.files: OrderedDict[str, io.BufferedReader] = OrderedDict()
        self.filesystems: dict[str, tuple] = {}

    def read(self, location: str, start: int, size: int) -> bytes:
        if not is_url(location):
            fh = self.files.pop(location, None) or open(location, "rb", buffering=0)
            self.files[location] = fh  # most recently used last
            while len(self.files) > OPEN_SHARDS:
                self.files.popitem(last=False)[1].close()
            fh.seek(start)
            return fh.read(size)
        if _is_http(location):
            request = urllib.request.Request(location, headers={"Range": f"bytes={start}-{start + size - 1}"})
            with urllib.request.urlopen(request, timeout=60) as resp:
                if resp.status != 206:
                    raise UserError(f"the server of {location!r} ignores range requests (HTTP {resp.status}); copy the shards locally")
                return resp.read()
        if location not in self.filesystems:
            self.filesystems[location] = _fsspec(location)
        fs, path = self.filesystems[location]
        return fs.cat_file(path, start=start, end=start + size)

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()
        self.files.clear()


# ----------------------------------------------------------------------------- the index
class _TarInfo(tarfile.TarInfo):
    """Notes on its archive whether reading stopped at the end-of-archive marker (a zero block): after the
    first member, ``tarfile`` ends silently at a missing, cut or corrupt header too."""

    @classmethod
    def fromtarfile(cls, tf):
        try:
            return super().fromtarfile(tf)
        except tarfile.EOFHeaderError:
            tf.reached_end_marker = True
            raise


@dataclass
class ShardRecord:
    """What one shard holds: its location, size and modification stamp (where known), the rows of its
    samples with an image, and the samples skipped (key, reason)."""

    location: str
    size: int | None
    mtime: str
    rows: list[Row] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return posixpath.basename(self.location.rstrip("/"))

    def to_json(self) -> dict:
        return {"name": self.name, "size": self.size, "mtime": self.mtime, "samples": [list(r) for r in self.rows],
                "skipped": [list(s) for s in self.skipped]}

    @classmethod
    def from_json(cls, location: str, size: int | None, mtime: str, obj: dict) -> "ShardRecord":
        return cls(location, size, mtime, [tuple(r) for r in obj["samples"]], [tuple(s) for s in obj.get("skipped", [])])


def _label(data: bytes) -> int | None:
    try:
        value = int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return value if value >= 0 else None


def scan_shard(location: str, size: int | None = None, mtime: str = "") -> ShardRecord:
    """One pass over a shard: its members grouped by key, the cls and txt members read, each image
    decoded once (a usable image gives a row, a broken one a skipped entry). A shard that is not a tar
    file, or ends before its end-of-archive marker, is a UserError."""
    name = posixpath.basename(location)
    samples: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    try:
        with _sequential(location) as fh:
            # headers only where the file can seek (members are skipped, not read), a stream for a URL
            with tarfile.open(fileobj=fh, mode="r|" if is_url(location) else "r:", tarinfo=_TarInfo) as tf:
                for member in tf:
                    base = posixpath.basename(member.name)
                    stem, dot, ext = base.partition(".")
                    if not member.isfile() or not dot or not stem:
                        continue
                    key, ext_l = posixpath.join(posixpath.dirname(member.name), stem), ext.lower()
                    sample = samples.setdefault(key, {})
                    if ext_l in IMAGE_EXTS and "image" not in sample:
                        data = tf.extractfile(member).read()
                        try:
                            sample["image"] = (ext, member.offset_data, member.size, *probe_image(data))
                        except ValueError as err:
                            skipped[key] = str(err).split(" (")[0]
                            sample["image"] = None
                    elif ext_l == "cls":
                        sample["cls"] = _label(tf.extractfile(member).read())
                    elif ext_l == "txt":
                        sample["txt"] = tf.extractfile(member).read().decode("utf-8", errors="replace").strip()
                complete = getattr(tf, "reached_end_marker", False)  # set while reading the headers
    except tarfile.TarError as err:
        what = "is truncated" if "unexpected end" in str(err) else "is not a readable tar file"
        raise UserError(f"shard {name!r} {what} ({err}); re-create it (`vqldm shard FOLDER OUT`) "
                        "or leave it out of --data") from None
    except (EOFError, OSError) as err:
        raise UserError(f"cannot read shard {location!r} ({err}); check the file or URL") from None
    if not complete:
        raise UserError(f"shard {name!r} is truncated or corrupt (it ends before the tar end-of-archive marker); "
                        "re-create it (`vqldm shard FOLDER OUT`) or leave it out of --data")
    rows, skips = [], []
    for key, sample in samples.items():
        image = sample.get("image")
        if image is None:
            skips.append((key, skipped.get(key, "no image member")))
            continue
        ext, offset, nbytes, height, width, bands = image
        rows.append((key, ext, offset, nbytes, sample.get("cls"), sample.get("txt", ""), height, width, bands))
    return ShardRecord(location, size, mtime, rows, skips)


def _scan_cache_file(location: str) -> Path:
    return cache_dir() / "shard-index" / f"{hashlib.sha256(location.encode()).hexdigest()[:20]}.json"


def _cached_scan(location: str, size: int | None, mtime: str) -> ShardRecord | None:
    try:
        saved = json.loads(_scan_cache_file(location).read_text(encoding="utf-8"))
        if (saved.get("format"), saved.get("version"), saved.get("location")) != (SCAN_FORMAT, INDEX_VERSION, location):
            return None
        if saved.get("size") != size or saved.get("mtime") != mtime:
            return None
        return ShardRecord.from_json(location, size, mtime, saved["record"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # missing or unreadable: scan again


class _Scans(torch.utils.data.Dataset):
    """Scan shards in DataLoader workers, one shard per item; a UserError comes back as its message."""

    def __init__(self, todo: list[tuple[str, int | None, str]]):
        self.todo = todo

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, i: int):
        try:
            return scan_shard(*self.todo[i])
        except UserError as err:
            return str(err)


@dataclass
class ShardIndex:
    """The shards of a ``--data shards:`` spec and what each holds."""

    spec: str
    records: list[ShardRecord]
    class_names: list[str]  # from shards.json; [] when the shards do not name their classes
    scanned: int = 0  # shards this call had to scan (0: all from shards.json or the cache)

    @property
    def num_samples(self) -> int:
        return sum(len(r.rows) for r in self.records)

    @property
    def skipped(self) -> list[SkippedFile]:
        return [SkippedFile(f"{r.name}:{key}", reason) for r in self.records for key, reason in r.skipped]


def _index_file(locations: list[str]) -> dict:
    """The shards.json beside the first shard, by shard name ({} when there is none or it is not ours)."""
    first = locations[0]
    where = posixpath.join(posixpath.dirname(first), INDEX_NAME) if is_url(first) else str(Path(first).parent / INDEX_NAME)
    data = _read_small(where)
    try:
        saved = json.loads(data) if data else {}
        if saved.get("format") != INDEX_FORMAT or saved.get("version") != INDEX_VERSION:
            return {}
        return saved
    except (ValueError, AttributeError):
        return {}


def index_shards(spec: str, log: Callable[[str], None] = print, progress: bool = True,
                 num_workers: int | None = None) -> ShardIndex:
    """The index of the shards ``spec`` names: from shards.json for the shards it describes at their
    current size, else from the scan cache when size and modification stamp match, else scanned (in
    DataLoader workers when several) and cached."""
    locations = shard_locations(spec)
    saved = _index_file(locations)
    known = {s["name"]: s for s in saved.get("shards", [])}
    records: list[ShardRecord | None] = []
    todo: list[tuple[int, tuple[str, int | None, str]]] = []
    for i, location in enumerate(locations):
        size, mtime = _stat(location)
        entry = known.get(posixpath.basename(location))
        record = None
        if entry is not None and entry.get("size") == size:
            record = ShardRecord.from_json(location, size, mtime, entry)
        else:
            record = _cached_scan(location, size, mtime)
        if record is None:
            todo.append((i, (location, size, mtime)))
        records.append(record)
    if todo:
        workers = min(len(todo), default_workers() if num_workers is None else num_workers) if len(todo) > 1 else 0
        loader = torch.utils.data.DataLoader(_Scans([t for _, t in todo]), batch_size=None, num_workers=workers,
                                             generator=torch.Generator().manual_seed(0))
        with tqdm(total=len(todo), desc="indexing shards", unit="shard", disable=bar_disable(progress), leave=False) as bar:
            for (i, (location, _, _)), result in zip(todo, loader):
                if isinstance(result, str):
                    raise UserError(result)
                records[i] = result
                bar.update(1)
                try:
                    atomic_write_json(_scan_cache_file(location), {"format": SCAN_FORMAT, "version": INDEX_VERSION, "location": location,
                                                                   "size": result.size, "mtime": result.mtime, "record": result.to_json()})
                except (OSError, UserError) as err:
                    log(f"warning: could not save the shard index to {_scan_cache_file(location)} ({err}); set VQLDM_CACHE_DIR "
                        "to a writable folder so the next run does not read every shard again")
    return ShardIndex(spec, records, list(saved.get("class_names", [])), scanned=len(todo))


# ----------------------------------------------------------------------------- splits
class ShardSplit(ImageSplit):
    """Samples of tar shards: sample ``i`` is the image member at ``offsets[i]`` (``sizes[i]`` bytes) of
    shard ``locations[sample_shard[i]]``, read by one ranged read, decoded and fitted when read."""

    caption_fix = "give each sample a .txt member (`vqldm shard` writes them from metadata.jsonl or a .txt beside each image)"

    def __init__(self, locations: list[str], shard_stamps: list[str], sample_shard, offsets, sizes, keys: PackedStrings,
                 captions: PackedStrings | None, labels: torch.Tensor, class_names: list[str], geometry: Geometry):
        self.locations = np.asarray(locations, dtype=str)
        self.shard_stamps = list(shard_stamps)  # "name size mtime" of each shard: part of the fingerprint
        self.sample_shard = np.asarray(sample_shard, dtype=np.int32)
        self.offsets, self.sizes = np.asarray(offsets, dtype=np.int64), np.asarray(sizes, dtype=np.int64)
        self.keys, self.captions = keys, captions  # captions[i]: sample i's txt member ("" : none); None: not read
        self.labels, self.class_names, self.geometry = labels, list(class_names), geometry
        self._reader: _RangeReader | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reader": None}  # open files stay with their process

    def _bytes(self, i: int) -> bytes:
        if self._reader is None or self._reader.pid != os.getpid():  # a forked worker opens its own files
            self._reader = _RangeReader()
        location, start, size = str(self.locations[self.sample_shard[i]]), int(self.offsets[i]), int(self.sizes[i])
        try:
            data = self._reader.read(location, start, size)
        except (urllib.error.URLError, TimeoutError) as err:
            raise _http_error(location, err) from None
        except OSError as err:
            raise UserError(f"cannot read shard {location!r} ({err}); check that it is still there") from None
        if len(data) != size:
            raise UserError(f"shard {location!r} is shorter than when it was indexed; it changed: run again to re-index")
        return data

    def read(self, i: int, offset: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
        g = self.geometry
        data = self._bytes(int(i))
        try:
            return fit_array(decode_image(data, g.channels), g.size, g.fit, offset=offset)
        except ValueError as err:
            raise UserError(f"sample {self.keys[int(i)]!r} of shard {str(self.locations[self.sample_shard[i]])!r} cannot be read any more "
                            f"({err}); the shard changed after it was indexed: run again to re-index") from None

    def subset(self, n: int) -> "ShardSplit":
        return ShardSplit(list(self.locations), self.shard_stamps, self.sample_shard[:n], self.offsets[:n], self.sizes[:n],
                          self.keys.prefix(n), self.captions.prefix(n) if self.captions is not None else None, self.labels[:n],
                          self.class_names, self.geometry)

    def fingerprint(self) -> str:
        """From the index (each shard's name, size and stamp; each sample's shard, place, key and label)
        and the captions, not from the pixels."""
        h = hashlib.sha256()
        h.update("\n".join(self.shard_stamps).encode())
        for arr in (self.sample_shard, self.offsets, self.sizes, self.keys.blob, self.keys.ends, self.labels.numpy()):
            h.update(np.ascontiguousarray(arr).tobytes())
        self._mix_captions(h)
        return h.hexdigest()[:16]

    def item_name(self, i: int) -> str:
        return f"sample {self.keys[i]!r} of {posixpath.basename(str(self.locations[self.sample_shard[i]]))}"

    def batch_sampler(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> "ShardBatchSampler":
        return ShardBatchSampler(self.sample_shard, batch_size, seed, rank, world_size)


def load_shards(spec: str, cfg: DataConfig, log: Callable[[str], None] = print, progress: bool = True,
                accelerator=None) -> Datasets:
    """``shards:SPEC``: the index (see the module docstring), split into training and held-out samples by
    a stable hash of ``key.ext``; with an ``accelerate.Accelerator`` the main process indexes first and
    the others reuse its cached scans."""
    is_main = accelerator is None or accelerator.is_main_process
    if not is_main:
        accelerator.wait_for_everyone()
    index = index_shards(spec, log=log, progress=progress and is_main, num_workers=cfg.num_workers)
    if accelerator is not None and is_main:
        accelerator.wait_for_everyone()
    skipped = index.skipped
    labelled = cfg.labels != "none"
    all_labels = [r[4] for rec in index.records for r in rec.rows if r[4] is not None]
    if labelled and not all_labels:
        raise UserError(f"--labels folders needs a .cls member (the class number) per sample in the shards of {spec!r}, found none; "
                        "write them with `vqldm shard FOLDER OUT --labels folders`, or train without labels")
    class_names = index.class_names or ([str(i) for i in range(max(all_labels) + 1)] if labelled else [])
    parts: dict[str, dict[str, list]] = {s: {k: [] for k in ("shard", "offset", "size", "key", "caption", "label")} for s in ("train", "holdout")}
    stamps = []
    for s, rec in enumerate(index.records):
        stamps.append(f"{rec.name} {rec.size} {rec.mtime}")
        for key, ext, offset, size, label, caption, *_ in rec.rows:
            if labelled and (label is None or label >= len(class_names)):
                skipped.append(SkippedFile(f"{rec.name}:{key}", "no cls label" if label is None else "cls label out of range"))
                continue
            part = parts["holdout" if _in_holdout(f"{key}.{ext}", cfg.holdout_fraction) else "train"]
            for name, value in zip(("shard", "offset", "size", "key", "caption", "label"),
                                   (s, offset, size, key, caption, label if labelled else -1)):
                part[name].append(value)
    train, holdout = parts["train"], parts["holdout"]
    total = index.num_samples + sum(len(r.skipped) for r in index.records)
    if not train["key"] and not holdout["key"]:
        raise UserError(f"no usable image in the shards of {spec!r} ({len(skipped):,} of {total:,} samples skipped: no image, "
                        "or a corrupt one); check the shards")
    if skipped:
        counts = Counter(s.reason for s in skipped)
        log(f"warning: skipped {len(skipped):,} of {total:,} samples in {SHARDS_PREFIX}{spec}: "
            + ", ".join(f"{n} {r}" for r, n in counts.most_common()))
    if not train["key"]:  # tiny: keep at least one training sample
        for name in train:
            train[name].append(holdout[name].pop())
    if not holdout["key"]:  # and one held-out sample, shared with training when there is only one
        for name in train:
            holdout[name].append(train[name][-1])
    locations = [r.location for r in index.records]
    geometry = Geometry.of(cfg)

    def split(p) -> ShardSplit:
        return ShardSplit(locations, stamps, p["shard"], p["offset"], p["size"], PackedStrings.of(p["key"]),
                          PackedStrings.of(p["caption"]) if cfg.captions else None, torch.as_tensor(p["label"], dtype=torch.long),
                          class_names, geometry)

    return Datasets(train=split(train), holdout=split(holdout), skipped=skipped, source=SHARDS_PREFIX + spec)


# ----------------------------------------------------------------------------- batch order
_SHARD_ORDER, _SAMPLE_ORDER = 0x5348, 0x534D  # first words of the seeds: streams apart from the augmentation's


class ShardBatchSampler:
    """Deterministic, resumable, shard-aware batch order, with :class:`~vqldm.data.loading.BatchSampler`'s
    interface (``batches(start_step)``, ``steps_per_epoch``, ``batch_size``, ...).

    Epoch ``e``: the shards holding samples of the split are permuted from (seed, e) and dealt in rounds
    of ``world_size``: in each round the largest shard goes to the process that holds the fewest samples
    so far, and so on, so each process gets ``n // world_size`` or one more whole shards, balanced by
    sample count. Process ``rank`` permutes the samples of its shards from (seed, e, rank) and reads the
    first ``steps_per_epoch * batch_size`` of them. ``steps_per_epoch`` is the same on every process and
    in every epoch: the samples of the ``n // world_size`` smallest shards (the least a process can be
    dealt) over the batch size, at least 1. ``batches(start_step)`` is a function of the step alone, so a
    resumed run reads exactly what an uninterrupted one reads from that step on.
    """

    def __init__(self, sample_shard: np.ndarray, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        sample_shard = np.asarray(sample_shard)
        if len(sample_shard) < 1:
            raise UserError("the training split is empty; add images")
        order = np.argsort(sample_shard, kind="stable")
        self.shards, starts, self.counts = np.unique(sample_shard[order], return_index=True, return_counts=True)
        self.members = np.split(order, starts[1:])  # per shard: its samples' indices into the split, in order
        n = len(self.shards)
        if n < world_size:
            raise UserError(f"{n} shard{'s hold' if n != 1 else ' holds'} the training samples but {world_size} processes read them "
                            f"(each reads whole shards); write at least {world_size} shards (`vqldm shard --shard-size`, smaller) "
                            "or start fewer processes")
        self.num_items, self.batch_size, self.seed = len(sample_shard), batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        guaranteed = int(np.sort(self.counts)[: n // world_size].sum())
        self.steps_per_epoch = max(1, guaranteed // batch_size)

    def _rng(self, *words: int) -> np.random.Generator:
        return np.random.default_rng([w % (1 << 63) for w in words])

    def shard_owners(self, epoch: int) -> np.ndarray:
        """The process that reads each shard (in ``self.shards`` order) in ``epoch``."""
        n, w = len(self.shards), self.world_size
        perm = self._rng(_SHARD_ORDER, self.seed, epoch).permutation(n)
        loads, owner = np.zeros(w, dtype=np.int64), np.empty(n, dtype=np.int64)
        for start in range(0, n, w):
            dealt = sorted(perm[start : start + w], key=lambda s: -self.counts[s])  # stable: ties keep the permuted order
            takers = sorted(range(w), key=lambda r: (loads[r], r))
            for s, r in zip(dealt, takers):
                owner[s] = r
                loads[r] += self.counts[s]
        return owner

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This process's samples for ``epoch``, in the order it reads them (``steps_per_epoch * batch_size``)."""
        owner = self.shard_owners(epoch)
        mine = np.concatenate([self.members[s] for s in np.flatnonzero(owner == self.rank)])
        order = mine[self._rng(_SAMPLE_ORDER, self.seed, epoch, self.rank).permutation(len(mine))]
        need = self.steps_per_epoch * self.batch_size
        if need > len(order):  # tiny sets: wrap around
            order = np.tile(order, math.ceil(need / len(order)))
        return order[:need]

    def batches(self, start_step: int = 0):
        step = start_step
        while True:
            epoch, within = divmod(step, self.steps_per_epoch)
            order = torch.from_numpy(self.epoch_order(epoch).astype(np.int64))
            for i in range(within, self.steps_per_epoch):
                yield order[i * self.batch_size : (i + 1) * self.batch_size]
                step += 1


# ----------------------------------------------------------------------------- writing shards
DEFAULT_SHARD_BYTES = 256_000_000


def _tar_member(tf: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append ``data`` as member ``name`` (fixed owner, mode and time: the same input gives the same
    bytes); returns the offset of its data in the archive."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tf.addfile(info, io.BytesIO(data))
    return tf.offset - math.ceil(len(data) / tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _sample_keys(rels: list[str]) -> dict[str, str]:
    """A webdataset key per image: its relative path without the extension, dots in the file name made
    underscores (a key ends at the first dot), made unique with a counter; given in sorted path order."""
    keys, taken = {}, set()
    for rel in sorted(rels):
        folder, base = posixpath.split(posixpath.splitext(rel)[0])
        key = posixpath.join(folder, base.replace(".", "_"))
        candidate, k = key, 1
        while candidate in taken:
            k += 1
            candidate = f"{key}_{k}"
        taken.add(candidate)
        keys[rel] = candidate
    return keys


def write_shards(folder: str | os.PathLike, out: str | os.PathLike, labels: str = "none", images_per_shard: int | None = None,
                 shard_bytes: int | None = None, prefix: str = "shard", log: Callable[[str], None] = print,
                 progress: bool = True) -> str:
    """Write the usable images of an image folder as tar shards ``OUT/PREFIX-000000.tar`` ... plus
    ``OUT/shards.json`` (the index: every sample's place, label, caption and image size; the class
    names). The images' encoded bytes are copied as they are; the folder index decodes each once first
    (broken files are skipped and reported). Samples are ordered by a hash of their path -- fixed, and
    mixed, so every shard is a fair sample of the folder -- and split into shards of equal image count
    (``images_per_shard``, or about ``shard_bytes`` a shard). Written under a temporary name, renamed
    into place when complete. Returns the one-line summary."""
    root, out = Path(folder).expanduser(), Path(out).expanduser()
    if not root.is_dir():
        raise UserError(f"image folder {str(root)!r} {'is a file' if root.exists() else 'not found'}; pass a folder of images")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{str(out)!r} is {'a file' if not out.is_dir() else 'not empty'}; pass a new or empty folder for the shards")
    index = index_folder(root, log=log, progress=progress)
    captions, caption_files = folder_captions(root, index.entries)
    usable = index.usable
    skipped = [s for s in index.skipped if s.path not in caption_files]
    class_names: list[str] = []
    if labels == "folders":
        class_names = sorted({rel.split("/")[0] for rel in usable if "/" in rel})
        if usable and not class_names:
            raise UserError(f"--labels folders needs one subfolder per class in {str(root)!r}, found none")
        skipped += [SkippedFile(rel, "not in a class subfolder") for rel in usable if "/" not in rel]
        usable = [rel for rel in usable if "/" in rel]
    if not usable:
        raise UserError(f"no usable image in {str(root)!r} ({len(skipped):,} files skipped: corrupt, truncated, too large or not images); "
                        "add valid PNG/JPEG/WebP files")
    if skipped:
        log(skipped_summary(skipped, index.num_files, root))
    keys = _sample_keys(usable)
    usable.sort(key=lambda rel: (hashlib.md5(rel.encode("utf-8")).hexdigest(), rel))
    if images_per_shard is None:
        mean = sum(index.entries[rel].size for rel in usable) / len(usable)
        per_sample = mean + 3 * tarfile.BLOCKSIZE  # header and padding, cls and txt members
        images_per_shard = max(1, int((shard_bytes or DEFAULT_SHARD_BYTES) // per_sample))
    class_index = {name: i for i, name in enumerate(class_names)}
    num_shards = math.ceil(len(usable) / images_per_shard)
    shards, total_bytes = [], 0
    bar = progress_bar(len(usable), 0, "shard", enabled=progress, unit="img")
    try:
        with AtomicDir(out) as tmp:
            for s in range(num_shards):
                name = f"{prefix}-{s:06d}.tar"
                rows = []
                with tarfile.open(tmp / name, "w", format=tarfile.PAX_FORMAT) as tf:
                    for rel in usable[s * images_per_shard : (s + 1) * images_per_shard]:
                        e, key, ext = index.entries[rel], keys[rel], posixpath.splitext(rel)[1][1:]
                        data = (root / rel).read_bytes()
                        if len(data) != e.size:
                            raise UserError(f"{str(root / rel)!r} changed while it was being sharded; run `vqldm shard` again")
                        offset = _tar_member(tf, f"{key}.{ext}", data)
                        label = class_index[rel.split("/")[0]] if class_names else None
                        if label is not None:
                            _tar_member(tf, f"{key}.cls", str(label).encode("ascii"))
                        caption = captions.get(rel, "")
                        if caption:
                            _tar_member(tf, f"{key}.txt", caption.encode("utf-8"))
                        rows.append([key, ext, offset, len(data), label, caption, e.height, e.width, e.bands])
                        bar.update(1)
                size = (tmp / name).stat().st_size
                total_bytes += size
                shards.append({"name": name, "size": size, "samples": rows, "skipped": []})
            atomic_write_json(tmp / INDEX_NAME, {"format": INDEX_FORMAT, "version": INDEX_VERSION, "source": str(root.absolute()),
                                                 "labels": labels, "class_names": class_names, "images": len(usable),
                                                 "skipped": [[s.path, s.reason] for s in skipped], "shards": shards})
    finally:
        bar.close()
    n_captions = sum(1 for rel in usable if captions.get(rel))
    labelled = f"{len(class_names)} classes" if class_names else "no labels"
    def count(n: int, noun: str) -> str:
        return f"{n:,} {noun}{'s' if n != 1 else ''}"

    return (f"wrote {count(len(usable), 'image')} ({labelled}, {count(n_captions, 'caption')}) as {count(num_shards, 'shard')} "
            f"of at most {count(min(images_per_shard, len(usable)), 'image')} ({total_bytes / 1e6:,.1f} MB) to {out}; "
            f"{count(len(skipped), 'file')} skipped; train with --data shards:{out}")
