"""Make ``accelerate launch --cpu --num_processes N vqldm train-...`` start N processes.

accelerate's ``--cpu`` launcher starts several processes only through ``mpirun`` (``--mpirun_hostfile``);
without it, it runs ONE process and drops ``--num_processes`` on the floor, so a user asking for two CPU
workers silently trains on one. vqldm's trainers detect that case (one process, ``ACCELERATE_USE_CPU``
set, no distributed environment, and the parent ``accelerate launch`` command line asking for N > 1
processes) and start N workers themselves with ``torch.distributed.run`` on a gloo group, which is what
``accelerate launch --multi_gpu`` does on a GPU machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

_DIST_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _option(tokens: list[str], *names: str) -> str | None:
    for i, tok in enumerate(tokens):
        for name in names:
            if tok == name and i + 1 < len(tokens):
                return tokens[i + 1]
            if tok.startswith(name + "="):
                return tok.split("=", 1)[1]
    return None


def requested_cpu_processes(env: dict[str, str] | None = None, parent_cmdline: list[str] | None = None) -> int:
    """How many CPU processes ``accelerate launch --cpu`` was asked for, when it started only this one.

    Returns 1 when there is nothing to do (not under ``accelerate launch --cpu``, already distributed,
    mpirun in use, or the parent's command line is unreadable).
    """
    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1", "yes"):
        return 1
    if any(env.get(v) for v in _DIST_VARS):
        return 1
    if parent_cmdline is None:
        try:
            raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
        except OSError:
            return 1
        parent_cmdline = [t for t in raw.decode(errors="replace").split("\0") if t]
    if not any(t == "launch" or t.endswith("accelerate.commands.launch") or t.endswith("accelerate-launch")
               for t in parent_cmdline):
        return 1
    if _option(parent_cmdline, "--mpirun_hostfile", "--mpirun-hostfile") is not None:
        return 1
    value = _option(parent_cmdline, "--num_processes", "--num-processes")
    try:
        n = int(value) if value is not None else 1
    except ValueError:
        return 1
    machines = _option(parent_cmdline, "--num_machines", "--num-machines")
    if machines not in (None, "1"):
        return 1  # multi-node CPU runs need mpirun; leave them to accelerate
    return max(1, n)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_cpu_workers(n: int, argv: list[str]) -> int:
    """Run ``vqldm <argv>`` in ``n`` processes (torch.distributed.run, one node, gloo); return the exit code."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(n),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "pipelines.cli", *argv]
    print(f"vqldm: `accelerate launch --cpu` started one process; starting {n} CPU workers "
          f"(torch.distributed.run, gloo, {env['OMP_NUM_THREADS']} thread(s) each)", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the workers got the same SIGINT; wait for their checkpoint and clean stop
        return proc.wait()
