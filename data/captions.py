"""Captions: one text per image, for text-to-image training (``data.captions``).

Where they come from, per source:

* an image folder: the Hugging Face imagefolder convention, a ``metadata.jsonl`` in the root or any
  subfolder, one JSON object a line with ``file_name`` (relative to that file's folder) and ``text``;
  or a ``.txt`` beside the image (same stem). ``metadata.jsonl`` wins where both give one.
* ``hf:NAME``: a string column (``data.caption_column``, else the first of :data:`CAPTION_COLUMNS`).
* ``shards:``: each sample's ``.txt`` member.

A split's captions are a :class:`PackedStrings` (``""`` = no caption for that image); a requested
caption that is missing is an error before anything is trained (:func:`check_captions`).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from pathlib import Path

import numpy as np

from ..plumbing.errors import UserError
from .decode import IMAGE_SUFFIXES

METADATA_NAME = "metadata.jsonl"
CAPTION_COLUMNS = ("text", "caption", "captions", "prompt")  # an hf: dataset's caption column, first found
METADATA_EXAMPLE = '{"file_name": "0001.png", "text": "a red car"}'


class PackedStrings:
    """Many strings as two numpy arrays (UTF-8 bytes and end offsets): forked DataLoader workers do not
    copy them (a list of str objects is copied page by page as its reference counts are touched), and a
    cache maps them from disk as they are."""

    def __init__(self, blob: np.ndarray, ends: np.ndarray):
        self.blob, self.ends = blob, ends

    @classmethod
    def of(cls, strings) -> "PackedStrings":
        encoded = [s.encode("utf-8") for s in strings]
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        return cls(blob, np.cumsum([len(e) for e in encoded], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> str:
        i = range(len(self))[i]
        start = int(self.ends[i - 1]) if i else 0
        return self.blob[start : int(self.ends[i])].tobytes().decode("utf-8")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def prefix(self, n: int) -> "PackedStrings":
        n = min(n, len(self))
        return PackedStrings(self.blob[: int(self.ends[n - 1]) if n else 0], self.ends[:n])

    def lengths(self) -> np.ndarray:
        """Bytes of each string (0 = empty)."""
        return np.diff(np.asarray(self.ends), prepend=0)

    def digest(self) -> bytes:
        """sha256 of every string, in order (a split's fingerprint mixes it in)."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.ends, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.blob, dtype=np.uint8).tobytes())
        return h.digest()


# ----------------------------------------------------------------------------- image folders
def caption_files(rels) -> set[str]:
    """The files of a folder (relative paths) that hold captions rather than images: every
    ``metadata.jsonl``, and each ``.txt`` with the stem of an image file beside it."""
    rels = set(rels)
    stems = {posixpath.splitext(r)[0] for r in rels if posixpath.splitext(r)[1].lower() in IMAGE_SUFFIXES}
    return {r for r in rels if posixpath.basename(r) == METADATA_NAME
            or (posixpath.splitext(r)[1] == ".txt" and posixpath.splitext(r)[0] in stems)}


def _metadata_line(line: str, where: str) -> tuple[str, str | None]:
    """(file_name, text or None) of one metadata.jsonl line; a UserError naming ``where`` (file:line)."""
    try:
        item = json.loads(line)
    except ValueError as err:
        raise UserError(f"{where} is not JSON ({getattr(err, 'msg', err)}); write one JSON object per line, "
                        f"e.g. {METADATA_EXAMPLE}") from None
    if not isinstance(item, dict) or not isinstance(item.get("file_name"), str):
        raise UserError(f"{where} has no \"file_name\" (the image's path relative to that file's folder); "
                        f"write one object per line, e.g. {METADATA_EXAMPLE}")
    text = item.get("text")
    if "text" in item and not isinstance(text, str):
        raise UserError(f"{where}: \"text\" is {type(text).__name__}, not a string; write the caption as a JSON string, "
                        f"e.g. {METADATA_EXAMPLE}")
    return item["file_name"], text


def folder_captions(root: str | Path, rels) -> tuple[dict[str, str], set[str]]:
    """Captions of a folder's images by relative path: a ``.txt`` beside the image, overridden by the
    ``text`` of a ``metadata.jsonl`` line (``file_name`` relative to that file's folder; a deeper file
    wins over a shallower one); and the files they came from (:func:`caption_files`). A malformed
    metadata line is a UserError naming ``file:line``."""
    root = Path(root)
    rels = set(rels)
    captions: dict[str, str] = {}
    for rel in sorted(rels):
        stem, ext = posixpath.splitext(rel)
        if ext.lower() in IMAGE_SUFFIXES and stem + ".txt" in rels:
            captions[rel] = (root / (stem + ".txt")).read_text(encoding="utf-8", errors="replace").strip()
    metas = sorted((r for r in rels if posixpath.basename(r) == METADATA_NAME), key=lambda r: (r.count("/"), r))
    for meta in metas:
        folder = posixpath.dirname(meta)
        text_lines = (root / meta).read_text(encoding="utf-8", errors="replace").splitlines()
        for n, line in enumerate(text_lines, 1):
            if not line.strip():
                continue
            name, text = _metadata_line(line, f"{root / meta}:{n}")
            if text is not None:
                captions[posixpath.normpath(posixpath.join(folder, name))] = text.strip()
    return captions, caption_files(rels)


# ----------------------------------------------------------------------------- Hugging Face datasets
def caption_column(name: str, columns, configured: str | None) -> str:
    """The caption column of an ``hf:`` dataset: ``configured``, else the first of :data:`CAPTION_COLUMNS`;
    a UserError listing the dataset's columns when there is none."""
    columns = list(columns)
    found = configured if configured is not None else next((c for c in CAPTION_COLUMNS if c in columns), None)
    if found is None or found not in columns:
        what = f"no column {configured!r}" if configured is not None else f"no caption column ({', '.join(CAPTION_COLUMNS)})"
        raise UserError(f"the Hugging Face dataset {name!r} has {what} (columns: {', '.join(columns)}); "
                        "name the one that holds the captions with --set data.caption_column=NAME")
    return found


def caption_text(value, where: str) -> str:
    """One caption cell -> text: a string, the first string of a list (datasets with several captions an
    image), ``None`` -> ""; anything else is a UserError naming ``where``."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = next((v for v in value if isinstance(v, str) and v.strip()), "")
    if not isinstance(value, str):
        raise UserError(f"{where} is {type(value).__name__}, not text; pick the column of captions with --set data.caption_column=NAME")
    return value.strip()


# ----------------------------------------------------------------------------- checks
def check_captions(split, source: str, part: str = "training") -> None:
    """A UserError when an image of ``split`` has no caption (or an empty one): how many, the first, and
    how to give one (``split.caption_fix``, where the split knows better than the folder convention)."""
    captions = split.captions
    if captions is None:
        raise UserError(f"the {part} images of {source} have no captions; use a folder with {METADATA_NAME} "
                        "(or a .txt beside each image), hf:NAME with a text column, or shards with .txt members")
    missing = np.flatnonzero(captions.lengths() == 0)  # every source strips its captions: blank ones are empty
    if len(missing):
        fix = getattr(split, "caption_fix", None) or f"give each image a `text` in {METADATA_NAME} or a .txt beside it"
        n, m = len(missing), len(captions)
        raise UserError(f"{n:,} of {m:,} {part} images in {source} {'has' if n == 1 else 'have'} no caption "
                        f"(first: {split.item_name(int(missing[0]))}); {fix}")


def no_captions(name: str) -> UserError:
    """The error for a source that has no captions at all (the named datasets)."""
    return UserError(f"{name} has no captions; use a folder with {METADATA_NAME} (or a .txt beside each image), "
                     "hf:NAME with a text column, or shards with .txt members")
