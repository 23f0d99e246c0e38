"""Checkpoint and file I/O: atomic writes, safetensors-only loading, resumable training checkpoints.

Design rules (issue: reliability and safety):
* every file and folder is written under a temporary name and renamed into place, so a run killed at
  any moment (SIGKILL included) leaves either the old or the new version, never half of one;
* weights load only from safetensors; pickle files (.bin/.ckpt/.pt/.pth) are refused with a message
  that names the conversion command (``vqldm convert``), which uses ``torch.load(weights_only=True)``;
* a training checkpoint is a folder ``checkpoints/step-XXXXXXXX/`` of safetensors files (model weights,
  optimizer state flattened to tensors) plus ``state.json`` (step, RNG states as lists, anything JSON).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserError

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8})$")


# ----------------------------------------------------------------------------- atomic writes
def tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def write_error_reason(err: BaseException) -> str | None:
    """The OS reason for a failed write ("No space left on device"), or None if ``err`` is not an I/O error.

    safetensors reports I/O failures as ``SafetensorError("... I/O error: <reason> (os error N)")``, not
    ``OSError``; both mean the disk (or a file-size limit) refused the write.
    """
    if isinstance(err, OSError):
        return err.strerror or str(err)
    if isinstance(err, SafetensorError):
        msg = str(err)
        if "I/O error" in msg:
            return msg.split("I/O error:", 1)[1].split(" (os error")[0].strip() or msg
    return None


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` (and the folders themselves) to disk before it is renamed into place."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(directory: Path) -> None:
    """Persist a rename: fsync the folder holding it (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def ensure_writable_dir(directory: Path) -> None:
    """Create ``directory`` (and parents) if needed; a UserError naming ``--out`` if it cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output folder {str(directory)!r} ({err.strerror}); choose a writable --out") from None
    if not os.access(directory, os.W_OK):
        raise UserError(f"output folder {str(directory)!r} is not writable; choose a writable --out")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    ensure_writable_dir(path.parent)
    tmp = tmp_sibling(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {str(path)!r} ({write_error_reason(err)}); free disk space or choose another --out") from None
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class AtomicDir:
    """Context manager: build a folder under a temporary name, then swap it into place on success.

    ``with AtomicDir(out / "vqvae") as tmp: model.save_pretrained(tmp)``. If the body raises, the
    temporary folder is removed and an existing folder at the target is left untouched.
    """

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)

    def __enter__(self) -> Path:
        ensure_writable_dir(self.target.parent)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-", dir=self.target.parent))
        return self.tmp

    def _fail(self, exc: BaseException) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        reason = write_error_reason(exc)
        if reason is not None:
            raise UserError(f"could not write {str(self.target)!r} ({reason}); free disk space or choose another --out") from None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._fail(exc)
            return False
        try:
            os.chmod(self.tmp, 0o755)
            _fsync_tree(self.tmp)  # the contents are on disk before the name says the folder is complete
        except OSError as err:
            self._fail(err)
        if self.target.exists():
            # Two renames: a crash between them leaves the old copy under .old, the new one complete.
            old = self.target.with_name(f".{self.target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(self.target, old)
            os.replace(self.tmp, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.target)
        fsync_dir(self.target.parent)
        # old copies left by a replace that was killed between its two renames (never a write in progress)
        for stale in self.target.parent.glob(f".{glob.escape(self.target.name)}.old-*"):
            shutil.rmtree(stale, ignore_errors=True)
        return False


# ----------------------------------------------------------------------------- safe loading
def refuse_pickle(path: str | os.PathLike) -> None:
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(
            f"{str(path)!r} is a pickle file, which can run arbitrary code when loaded; vqldm loads only "
            f"safetensors: convert it with `vqldm convert {path} --trust-pickle` if you trust its source"
        )


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; refuse pickles and turn unreadable files into a UserError."""
    refuse_pickle(path)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {str(path)!r} not found; check the path")
    try:
        return load_file(str(path), device=device)
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"weights file {str(path)!r} is corrupt or not safetensors ({err}); re-export it") from None


def unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors that share no memory, as safetensors requires: a tied weight (a T5's
    ``shared`` and ``encoder.embed_tokens``) is written once per name, and loads back into the tied module."""
    out, seen = {}, set()
    for k, v in tensors.items():
        t = v.detach().contiguous().cpu()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        out[k] = t.clone() if key in seen else t
        if key is not None:
            seen.add(key)
    return out


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    ensure_writable_dir(path.parent)
    tmp = tmp_sibling(path)
    try:
        save_file(unshared(tensors), str(tmp), metadata=metadata)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:
        tmp.unlink(missing_ok=True)
        reason = write_error_reason(err)
        if reason is None:
            raise
        raise UserError(f"could not write {str(path)!r} ({reason}); free disk space or choose another --out") from None
    fsync_dir(path.parent)


def load_trusted_pickle(src: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a pickled state dict (a Lightning ``.ckpt``'s ``state_dict``, or the dict itself), for an
    explicit, user-requested conversion: loaded with ``weights_only=True`` (no code execution)."""
    try:
        obj = torch.load(str(src), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused a global: the file wants to run code
        found = re.search(r"unsupported GLOBAL ([\w.]+)", str(err))
        what = f"it asks to call {found.group(1)}" if found else "it holds Python objects, not only tensors"
        raise UserError(
            f"{str(src)!r} is not a plain weights file ({what}); vqldm never runs code from a pickle, so it cannot convert it"
        ) from None
    except Exception as err:  # not a torch file, truncated zip, ...
        detail = (str(err).strip().splitlines() or [""])[0][:160]
        raise UserError(f"could not read {str(src)!r} as a torch weights file ({type(err).__name__}: {detail})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"{str(src)!r} does not hold a state dict of tensors; nothing to convert")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"{str(src)!r} holds no tensors; nothing to convert")
    return tensors


def convert_pickle_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Explicit, user-requested conversion of a pickled state dict to one safetensors file (same names)."""
    tensors = load_trusted_pickle(src)
    save_safetensors(tensors, dst)
    return len(tensors)


def describe_load_error(err: BaseException, limit: int = 160) -> str:
    """The informative line of a ``load_state_dict`` error ("size mismatch for ...: ... torch.Size([64, 3]) ...").

    PyTorch's message starts with "Error(s) in loading state_dict for X:", which says nothing; the
    first line naming a key is what a user needs.
    """
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        m = re.match(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from checkpoint, "
                     r"the shape in current model is torch\.Size\((\[.*?\])\)", ln)
        if m:
            return f"{m.group(1)} has shape {m.group(2)} in the checkpoint, {m.group(3)} in this config"[:limit]
        if ln.startswith(("size mismatch", "Missing key", "Unexpected key")):
            return ln[:limit]
    if isinstance(err, KeyError):
        return f"missing {err}"[:limit]
    return (lines[0] if lines else type(err).__name__)[:limit]


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's weights (names, dtypes and bytes, in name order): identifies a trained model
    whatever file it was saved in, so a folder can record which vqvae its denoiser was trained on."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- optimizer state <-> tensors
def optimizer_state_to_tensors(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into a flat tensor dict (safetensors) and JSON-able metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, pstate in state_dict["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_state_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


# ----------------------------------------------------------------------------- training checkpoints
def checkpoint_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (those that were renamed into place), oldest first. Partial ones are ignored."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = CHECKPOINT_PATTERN.match(child.name)
        if m and child.is_dir() and (child / "state.json").is_file():
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def save_training_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    tensor_files: dict[str, dict[str, torch.Tensor]],
    state: dict,
    keep: int = 2,
) -> Path:
    """Write ``checkpoints/step-XXXXXXXX/{name}.safetensors`` for each entry plus ``state.json``, atomically.

    ``state.json`` is written last inside the temporary folder, and the folder is renamed into place, so
    :func:`list_checkpoints` never sees a partial checkpoint. Older checkpoints beyond ``keep`` are removed.
    """
    root = Path(run_dir) / "checkpoints"
    target = root / checkpoint_dir_name(step)
    with AtomicDir(target) as tmp:
        for name, tensors in tensor_files.items():
            save_file(unshared(tensors), str(tmp / f"{name}.safetensors"))
        with open(tmp / "state.json", "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        # Rename first: a kill during rmtree must not leave a half-deleted folder under a checkpoint name.
        doomed = old.with_name(f".{old.name}.del-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(old, doomed)
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
    # leftovers of killed writes and deletions
    for pattern in (".step-*.tmp-*", ".step-*.old-*", ".step-*.del-*"):
        for stale in root.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)
    return target


def load_training_checkpoint(path: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"checkpoint {str(path)!r} has no readable state.json ({err}); delete it to resume from an older one") from None
    files = {p.stem: load_safetensors(p) for p in sorted(path.glob("*.safetensors"))}
    return files, state
