"""Run folders: creating ``--out`` safely, one-line console messages, progress, and the metrics log.

A run folder holds ``config.yaml``, ``metrics.jsonl`` + ``tensorboard/`` (scalars, written by
:class:`RunLogger`), ``loss_curves.png``, ``images/``, ``checkpoints/`` and the exported model.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from tqdm.auto import tqdm

from .checkpoint import ensure_writable_dir, latest_checkpoint
from .errors import UserError


def console(msg: str) -> None:
    """One line for the user, above any progress bar: warnings to stderr, everything else to stdout."""
    tqdm.write(msg, file=sys.stderr if msg.startswith("warning") else sys.stdout)


PLAIN_PROGRESS_SECONDS = 30.0  # a log file gets one progress line per half minute (tqdm: ~10 updates a second)


class PlainProgress:
    """A progress bar for a log file: one plain line (step, rate, ETA, the bar's postfix such as the loss)
    every ``every`` seconds and at the end, instead of tqdm's carriage-return redraws. The interface of the
    tqdm calls the loops use: ``update``, ``set_postfix``, ``close``."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "step", every: float = PLAIN_PROGRESS_SECONDS,
                 stream: TextIO | None = None, clock=time.monotonic):
        self.total, self.n, self.desc, self.unit, self.every = total, initial, desc, unit, every
        self.stream, self.clock = stream, clock
        self.start_n, self.start = initial, clock()
        self.last_print, self.postfix, self.closed = self.start, "", False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last_print >= self.every:
            self._print()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed and self.n > self.start_n:
            self._print()
        self.closed = True

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = (self.n - self.start_n) / elapsed
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = f", ETA {_duration((self.total - self.n) / rate)}" if rate > 0 and self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {self.unit} {self.n}/{self.total}{share}, {rate:.3g} {self.unit}s/s{eta}{extra}"

    def _print(self) -> None:
        print(self.line(), file=self.stream or sys.stderr, flush=True)
        self.last_print = self.clock()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def progress_bar(total: int, initial: int = 0, desc: str = "", enabled: bool = True, unit: str = "step"):
    """The progress display of a long loop: tqdm's bar on a terminal; plain lines at a fixed interval
    (:class:`PlainProgress`) when stderr is a file (a batch scheduler, ``nohup``); nothing when disabled."""
    if enabled and not sys.stderr.isatty():
        return PlainProgress(total, initial, desc, unit)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)


def bar_disable(progress: bool) -> bool | None:
    """tqdm's ``disable`` for a short inner bar (encoding, indexing, features): off when not wanted, and
    ``None`` -- tqdm's "off unless stderr is a terminal" -- otherwise, so a log file gets no redraws."""
    return None if progress else True


def check_writable_target(out: Path, flag: str = "--out") -> None:
    """A folder that exists and is writable, or whose nearest existing ancestor is a writable folder (so it
    can be created); a one-line UserError naming ``flag`` otherwise. Creates nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {str(out)!r} is a file; choose a folder path")
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            raise UserError(f"output folder {str(out)!r} is not writable; choose a writable {flag}")
        return
    for parent in out.absolute().parents:  # the nearest existing ancestor must be a writable folder
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"cannot create output folder {str(out)!r} ({str(parent)!r} is a file); choose a writable {flag}")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"cannot create output folder {str(out)!r} ({str(parent)!r} is not writable); choose a writable {flag}")
            return


def prepare_run_dir(out: str | os.PathLike, resume: bool, is_main: bool, create: bool = True) -> Path:
    """Create the run folder; refuse to mix a new run into an old one unless --resume is given.

    ``create=False`` only checks (no side effects), so a trainer can reject a bad ``--out`` before its
    slow data scan and still create nothing until the inputs are known to be good.
    """
    out = Path(out)
    check_writable_target(out)
    if not resume and latest_checkpoint(out) is not None:
        raise UserError(f"{str(out)!r} already holds a run with checkpoints; pass --resume to continue it or choose another --out")
    if is_main and create:
        ensure_writable_dir(out)
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
