"""What several benchmark scripts share: the CPU's name for the printed conditions, and a `__main__`
runner that turns vqldm's user errors into one line and exit code 2."""

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


def run_main(main) -> None:
    from vqldm.plumbing.errors import UserError

    try:
        sys.exit(main())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
