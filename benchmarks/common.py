"""What several benchmark scripts share: the CPU's name for the printed conditions, the seed / threads
options and the thread set-up of scripts that train in subprocesses, and a `__main__` runner that turns
vqldm's user errors into one line and exit code 2."""

from __future__ import annotations

import platform
import sys
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def add_seed_and_threads(parser, what: str = "the training processes") -> None:
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help=f"torch threads here and in {what}")


def prepare_out(out: Path, threads: int) -> dict:
    """Create ``out``, use ``threads`` torch threads here, and return the environment for vqldm subprocesses
    (the same thread count, so a run's figures say what they were measured with)."""
    import os

    import torch

    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def run_main(main) -> None:
    from vqldm.plumbing.errors import UserError

    try:
        sys.exit(main())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
