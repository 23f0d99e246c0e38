"""Large tensors on disk in the safetensors format, written in pieces and read memory-mapped.

A safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's dtype, shape
and byte range) and the raw bytes. When every shape is known in advance, the file can be laid out
first and filled a batch at a time (:class:`TensorFileWriter`: a cache of a million latents never
sits in memory), and read back with ``numpy.memmap`` (:func:`mmap_tensors`): the tensors are views of
the page cache, so every process of a distributed run shares one copy, and a batch gathered from
them reads only its own rows. Files written here load with ``safetensors.torch.load_file`` too.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from .checkpoint import fsync_dir, refuse_pickle, tmp_sibling, write_error_reason
from .errors import UserError

# safetensors dtype names <-> (torch dtype, numpy dtype used to map the bytes)
_DTYPES = {
    "F32": (torch.float32, np.float32),
    "F16": (torch.float16, np.float16),
    "BF16": (torch.bfloat16, np.uint16),  # numpy has no bfloat16: map as uint16, view as bfloat16
    "I64": (torch.int64, np.int64),
    "I32": (torch.int32, np.int32),
    "I16": (torch.int16, np.int16),
    "U8": (torch.uint8, np.uint8),
}
_NAMES = {torch_dtype: name for name, (torch_dtype, _) in _DTYPES.items()}


class TensorFileWriter:
    """Lay out a safetensors file for tensors of known shapes, then fill rows: ``write(name, start, rows)``.

    The file is built under a temporary name and renamed into place by :meth:`close` (atomic: a reader
    never sees a half-filled file); leaving the ``with`` block on an exception removes it.
    """

    def __init__(self, path: str | os.PathLike, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        self.path = Path(path)
        header: dict = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        for name, (dtype, shape) in specs.items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        self.data_start = 8 + len(raw)
        self.fd = None
        self.tmp = tmp_sibling(self.path)
        try:
            with open(self.tmp, "wb") as fh:
                fh.write(struct.pack("<Q", len(raw)) + raw)
                fh.truncate(self.data_start + offset)
        except OSError as err:
            self._fail(err)
        self.header = header
        self.fd = os.open(self.tmp, os.O_WRONLY)

    def write(self, name: str, start: int, rows: torch.Tensor) -> None:
        """Rows ``start .. start + len(rows)`` of tensor ``name`` (plain writes, not a writable memory
        map: a full disk is an OSError here, not a SIGBUS)."""
        info = self.header[name]
        rows = rows.detach().cpu().to(_DTYPES[info["dtype"]][0]).contiguous()
        if tuple(rows.shape[1:]) != tuple(info["shape"][1:]) or start + rows.shape[0] > info["shape"][0]:
            raise ValueError(f"rows {tuple(rows.shape)} at {start} do not fit {name} {info['shape']}")
        data = (rows.view(torch.uint16) if rows.dtype == torch.bfloat16 else rows).numpy().tobytes()
        row_bytes = len(data) // max(rows.shape[0], 1)
        try:
            os.pwrite(self.fd, data, self.data_start + info["data_offsets"][0] + start * row_bytes)
        except OSError as err:
            self._fail(err)

    def close(self) -> None:
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            os.replace(self.tmp, self.path)
        except OSError as err:
            self._fail(err)
        fsync_dir(self.path.parent)

    def _discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.tmp.unlink(missing_ok=True)

    def _fail(self, err: OSError):
        self._discard()
        reason = write_error_reason(err)
        if reason is None:
            raise err
        raise UserError(f"could not write {str(self.path)!r} ({reason}); free disk space or choose another folder") from None

    def __enter__(self) -> "TensorFileWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self._discard()
        return False


def mmap_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as a read-only memory map (copy-on-write: writing to one
    changes only this process's copy, never the file)."""
    refuse_pickle(path)
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        size = path.stat().st_size
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            torch_dtype, np_dtype = _DTYPES[info["dtype"]]
            begin, end = info["data_offsets"]
            shape = tuple(info["shape"])
            if 8 + length + end > size or end - begin != int(np.prod(shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize:
                raise ValueError(f"tensor {name!r} does not fit the file")
            if end == begin:
                out[name] = torch.empty(shape, dtype=torch_dtype)
                continue
            array = np.memmap(path, dtype=np_dtype, mode="c", offset=8 + length + begin, shape=shape)
            tensor = torch.from_numpy(array)
            out[name] = tensor.view(torch.bfloat16) if torch_dtype == torch.bfloat16 else tensor
        return out
    except FileNotFoundError:
        raise UserError(f"{str(path)!r} not found; delete its folder to rebuild it") from None
    except (OSError, ValueError, KeyError, struct.error, json.JSONDecodeError) as err:
        raise UserError(f"{str(path)!r} is corrupt or not safetensors ({err}); delete its folder to rebuild it") from None
