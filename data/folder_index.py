"""The index of an image folder: which files are usable images, found once and remembered.

The first run over a folder decodes every file once (in DataLoader worker processes) to find the
usable images; corrupt, truncated, zero-byte, oversized and non-image files are recorded with a reason.
The result is kept in ``<cache>/folder-index/<hash of the folder's path>.json`` with each file's size
and modification time. A later run lists the folder and ``stat``s each file (no decoding): a file whose
size or mtime changed, or a new one, is decoded again, a removed one is dropped. An unchanged folder of
20,000 images is re-indexed in well under a second.

The index holds no pixels and does not depend on the model's geometry (channels, size, fit): training
reads and fits the images on the fly (:mod:`vqldm.data.splits`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..plumbing.checkpoint import atomic_write_json
from ..plumbing.errors import UserError
from ..plumbing.runs import bar_disable
from .decode import IMAGE_SUFFIXES, probe_image

INDEX_FORMAT = "vqldm-folder-index"
INDEX_VERSION = 1


def cache_dir() -> Path:
    """vqldm's cache folder: ``$VQLDM_CACHE_DIR``, else ``~/.cache/vqldm``."""
    return Path(os.environ.get("VQLDM_CACHE_DIR") or Path.home() / ".cache" / "vqldm")


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


@dataclass
class SkippedFile:
    path: str
    reason: str


@dataclass
class IndexEntry:
    size: int
    mtime_ns: int
    reason: str | None  # None = a usable image
    height: int = 0
    width: int = 0
    bands: int = 0  # 1 = grayscale, 3 = colour

    def to_row(self) -> list:
        return [self.size, self.mtime_ns, self.reason, self.height, self.width, self.bands]


@dataclass
class FolderIndex:
    root: Path
    entries: dict[str, IndexEntry]  # relative POSIX path -> entry, sorted by path
    decoded: int = 0  # files this call had to decode (0 when the folder was unchanged)
    num_files: int = 0

    @property
    def usable(self) -> list[str]:
        return [rel for rel, e in self.entries.items() if e.reason is None]

    @property
    def skipped(self) -> list[SkippedFile]:
        return [SkippedFile(rel, e.reason) for rel, e in self.entries.items() if e.reason is not None]


def index_file(root: Path) -> Path:
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:20]
    return cache_dir() / "folder-index" / f"{key}.json"


def _read_saved(path: Path, root: Path) -> dict[str, IndexEntry]:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("format") != INDEX_FORMAT or saved.get("version") != INDEX_VERSION or saved.get("root") != str(root.resolve()):
            return {}
        return {rel: IndexEntry(*row) for rel, row in saved["files"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}  # missing or unreadable: index again


class _Probe(torch.utils.data.Dataset):
    """Decode-check files in DataLoader workers: item -> (height, width, bands, None) or (0, 0, 0, reason)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return (*probe_image(self.paths[i]), None)
        except ValueError as err:
            return 0, 0, 0, str(err).split(" (")[0]


def default_workers() -> int:
    """Decoding worker processes when the config leaves it open: the cores this process has (its share
    when a launcher started several on this machine: ``LOCAL_WORLD_SIZE``) but one for training, at
    most 8; 0 (decode in the training process) when it has a single core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0, min(8, per_process - 1))


def index_folder(root: str | os.PathLike, log: Callable[[str], None] = print, progress: bool = True,
                 num_workers: int | None = None, save: bool = True) -> FolderIndex:
    """List ``root``, reuse what the saved index knows about unchanged files, decode-check the rest, and
    save the index (atomically; a cache folder that cannot be written only costs the next run time)."""
    root = Path(root)
    files = scan_folder(root)
    if not files:
        raise UserError(f"data folder {str(root)!r} is empty; put PNG/JPEG/WebP images in it (subfolders are searched)")
    path = index_file(root)
    saved = _read_saved(path, root)
    entries: dict[str, IndexEntry] = {}
    todo: list[tuple[str, Path]] = []
    for file in files:
        rel = file.relative_to(root).as_posix()
        try:
            st = file.stat()
        except OSError as err:
            entries[rel] = IndexEntry(0, 0, "unreadable")
            continue
        old = saved.get(rel)
        if old is not None and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns:
            entries[rel] = old
        elif file.suffix.lower() not in IMAGE_SUFFIXES:
            entries[rel] = IndexEntry(st.st_size, st.st_mtime_ns, "not an image (unsupported extension)")
        else:
            entries[rel] = IndexEntry(st.st_size, st.st_mtime_ns, None)
            todo.append((rel, file))
    if todo:
        workers = (default_workers() if num_workers is None else num_workers) if len(todo) >= 256 else 0
        # its own generator: indexing must not draw from the global RNG (a first run would differ from a rerun)
        loader = torch.utils.data.DataLoader(_Probe([f for _, f in todo]), batch_size=32, num_workers=workers,
                                             collate_fn=list, generator=torch.Generator().manual_seed(0))
        results = []
        with tqdm(total=len(todo), desc=f"indexing {root.name or root}", unit="file", disable=bar_disable(progress), leave=False) as bar:
            for chunk in loader:
                results.extend(chunk)
                bar.update(len(chunk))
        for (rel, _), (height, width, bands, reason) in zip(todo, results):
            e = entries[rel]
            entries[rel] = IndexEntry(e.size, e.mtime_ns, reason, height, width, bands)
    changed = bool(todo) or set(entries) != set(saved)
    if save and changed:
        try:
            atomic_write_json(path, {"format": INDEX_FORMAT, "version": INDEX_VERSION, "root": str(root.resolve()),
                                     "files": {rel: e.to_row() for rel, e in entries.items()}})
        except (OSError, UserError) as err:
            log(f"warning: could not save the folder index to {path} ({err}); set VQLDM_CACHE_DIR to a writable folder "
                "so the next run does not decode every image again")
    index = FolderIndex(root, entries, decoded=len(todo), num_files=len(files))
    return index


def skipped_summary(skipped: list[SkippedFile], total: int, root: Path) -> str:
    counts = Counter(s.reason for s in skipped)
    return (f"warning: skipped {len(skipped)} of {total} files in {root}: "
            + ", ".join(f"{n} {r}" for r, n in counts.most_common()))
