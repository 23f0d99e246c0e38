"""Plumbing shared by both trainers: accelerator, run folder, logging, image grids, signals, NaN guard.

Lives in the lowest layer that needs it (stage 1); ``diffusion`` imports it, nothing imports upward.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .checkpoint import atomic_write_bytes, latest_checkpoint
from .errors import UserError


@dataclass
class TrainLoopConfig:
    """Loop settings common to both trainers (per-process batch size; global = batch_size x processes)."""

    max_steps: int = 5000
    batch_size: int = 64
    lr: float = 2e-4
    adam_betas: list[float] = (0.5, 0.9)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after warm-up; cosine decays to lr x min_lr_ratio
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    grad_accumulation: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # autocast on GPU; CPU runs stay fp32
    seed: int = 0
    log_every: int = 50
    image_every: int = 1000  # reconstruction / sample grids
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    skip_nonfinite_once: bool = True  # skip one bad batch with a warning before stopping on NaN/inf
    progress: bool = True

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "log_every", "image_every", "checkpoint_every", "grad_accumulation"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"train.lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.adam_betas) != 2:
            raise ValueError("train.adam_betas must be two numbers")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)


def console(msg: str) -> None:
    """One line for the user, above any progress bar: warnings to stderr, everything else to stdout."""
    tqdm.write(msg, file=sys.stderr if msg.startswith("warning") else sys.stdout)


def make_accelerator(cfg: TrainLoopConfig):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    mp = cfg.mixed_precision if torch.cuda.is_available() else "no"
    # Several processes started by torchrun / `accelerate launch --multi_gpu` on a machine without CUDA:
    # accelerate only forms a gloo (MULTI_CPU) group when told cpu=True; otherwise each process would
    # silently train alone. (`accelerate launch --cpu` starts several processes only through mpirun.)
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    acc = Accelerator(mixed_precision=mp, gradient_accumulation_steps=cfg.grad_accumulation, cpu=multi_cpu)
    set_seed(cfg.seed, device_specific=False)
    return acc


def prepare_run_dir(out: str | os.PathLike, resume: bool, is_main: bool, create: bool = True) -> Path:
    """Create the run folder; refuse to mix a new run into an old one unless --resume is given.

    ``create=False`` only checks (no side effects), so a trainer can reject a bad ``--out`` before its
    slow data scan and still create nothing until the inputs are known to be good.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; choose a folder path")
    for parent in out.absolute().parents:  # the nearest existing ancestor must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"cannot create output folder {str(out)!r} ({str(parent)!r} is a file); choose a writable --out")
            if not out.exists() and not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"cannot create output folder {str(out)!r} ({str(parent)!r} is not writable); choose a writable --out")
            break
    if not resume and latest_checkpoint(out) is not None:
        raise UserError(f"{str(out)!r} already holds a run with checkpoints; pass --resume to continue it or choose another --out")
    if is_main and create:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create output folder {str(out)!r} ({err.strerror}); choose a writable --out") from None
        if not os.access(out, os.W_OK):
            raise UserError(f"output folder {str(out)!r} is not writable; choose a writable --out")
    return out


class RunLogger:
    """TensorBoard scalars, ``metrics.jsonl`` and a loss-curve PNG; a no-op on non-main processes."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
            except Exception as err:  # tensorboard missing or broken: keep training
                console(f"warning: TensorBoard logging disabled ({err})")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
        path = self.run_dir / "metrics.jsonl"
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": step, **values}) + "\n")
        except OSError as err:
            raise UserError(f"could not write {str(path)!r} ({err.strerror}); free disk space or choose another --out") from None

    def loss_curves(self, keys: list[str], name: str = "loss_curves.png") -> None:
        """Plot the logged scalars ``keys`` against step, next to the TensorBoard logs."""
        if not self.enabled:
            return
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        series = {k: [(r["step"], r[k]) for r in rows if k in r and math.isfinite(r[k])] for k in keys}
        series = {k: v for k, v in series.items() if v}
        if not series:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3), squeeze=False)
        for ax, (k, pts) in zip(axes[0], series.items()):
            xs, ys = zip(*pts)
            ax.plot(xs, ys, lw=1)
            ax.set_title(k)
            ax.set_xlabel("step")
            if all(y > 0 for y in ys) and max(ys) / max(min(ys), 1e-12) > 20:
                ax.set_yscale("log")
        fig.tight_layout()
        tmp = self.run_dir / f".{name}.tmp.png"
        try:
            fig.savefig(tmp, dpi=100)
            os.replace(tmp, self.run_dir / name)
        except OSError as err:  # a plot is not worth stopping for; the next write reports a full disk
            tmp.unlink(missing_ok=True)
            console(f"warning: could not write {self.run_dir / name} ({err.strerror})")
        finally:
            plt.close(fig)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] B x C x H x W -> uint8 B x H x W x C."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> Image.Image:
    """[-1, 1] images -> one PIL grid (grayscale stays grayscale)."""
    arr = images_to_uint8(images)
    b, h, w, c = arr.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(b))))
    ncol = int(math.ceil(b / nrow))
    grid = np.zeros((ncol * (h + padding) + padding, nrow * (w + padding) + padding, c), dtype=np.uint8)
    for i in range(b):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = arr[i]
    return Image.fromarray(grid[:, :, 0] if c == 1 else grid)


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


class StopSignals:
    """While active, SIGINT/SIGTERM set ``requested`` instead of killing the process, so the loop can
    save a checkpoint and exit cleanly. A second signal restores the default behaviour."""

    def __init__(self):
        self.requested: str | None = None
        self._old: dict = {}

    def _handler(self, signum, frame):
        if self.requested is not None:  # second signal: give up immediately
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def stop_if_signalled(signals: "StopSignals", step: int, save_checkpoint, bar, logger: "RunLogger", run_dir: Path) -> None:
    """After a SIGINT/SIGTERM: save a checkpoint, close the bar and logs, and stop with one line."""
    if not signals.requested:
        return
    path = save_checkpoint(step)
    bar.close()
    logger.close()
    stop = UserError(f"stopped by {signals.requested} at step {step}; checkpoint saved to {path or run_dir}; continue with --resume")
    stop.exit_code = 128 + int(signal.Signals[signals.requested])  # the shell convention: 130 for SIGINT, 143 for SIGTERM
    raise stop


class NonFiniteGuard:
    """Stops a run on a NaN/inf loss with a message naming the step; may skip one bad batch first."""

    def __init__(self, allow_skip: bool, log=print):
        self.allow_skip = allow_skip
        self.skipped = 0
        self.log = log

    def check(self, loss: torch.Tensor, step: int, last_checkpoint: Path | None) -> bool:
        """True if the step may proceed, False if the batch should be skipped; raises UserError to stop."""
        value = float(loss.detach())
        if math.isfinite(value):
            return True
        if self.allow_skip and self.skipped == 0:
            self.skipped += 1
            self.log(f"warning: loss is {value} at step {step}; skipping this batch once")
            return False
        where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
        raise UserError(f"loss became {value} at step {step} ({where}); lower train.lr, enable train.grad_clip, or check the data, then --resume")


def lr_lambda(warmup_steps: int, schedule: str = "constant", max_steps: int = 0, min_ratio: float = 0.0):
    """Learning-rate multiplier for an optimizer step: linear warm-up, then constant or a cosine decay that
    reaches ``min_ratio`` at ``max_steps``. A pure function of the step, so resuming needs no state."""

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant" or max_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (max_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def schedule_for(tc: TrainLoopConfig, optimizer_steps: int | None = None):
    """``lr_lambda`` configured from a trainer's loop settings."""
    return lr_lambda(tc.warmup_steps, tc.lr_schedule, optimizer_steps or tc.max_steps, tc.min_lr_ratio)


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
