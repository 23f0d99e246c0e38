"""Run folders: creating ``--out`` safely, one-line console messages, and the metrics log.

A run folder holds ``config.yaml``, ``metrics.jsonl`` + ``tensorboard/`` (scalars, written by
:class:`RunLogger`), ``loss_curves.png``, ``images/``, ``checkpoints/`` and the exported model.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from tqdm.auto import tqdm

from .checkpoint import ensure_writable_dir, latest_checkpoint
from .errors import UserError


def console(msg: str) -> None:
    """One line for the user, above any progress bar: warnings to stderr, everything else to stdout."""
    tqdm.write(msg, file=sys.stderr if msg.startswith("warning") else sys.stdout)


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
