"""Skip and stop decisions are agreed by every process (plumbing.trainkit.StepGuard): two gloo processes,
a fault on rank 1 only. If rank 1 decided alone, rank 0 would wait for it in the next collective (DDP's
gradient all-reduce) and the run would hang; the timeouts below turn a hang into a failure."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vqldm.plumbing.checkpoint import load_safetensors

pytestmark = pytest.mark.slow  # several 2-process runs

WORKER = Path(__file__).with_name("agreement_worker.py")
ARGS = ["--config", "tiny", "--data", "fashion-mnist", "--set", "train.progress=false", "--set", "train.image_every=100",
        "--set", "train.log_every=1", "--set", "train.checkpoint_every=100"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two(fault: str, step: int, ae_run: Path, out: Path, *extra: str, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Both processes of one run, started as torchrun would start them (RANK, WORLD_SIZE, MASTER_* in the
    environment), so that each one's exit code can be read."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        cmd = [sys.executable, str(WORKER), fault, "1", str(step), "--", "train-diffusion", *ARGS,
               "--autoencoder", str(ae_run), "--out", str(out), *extra]
        procs.append(subprocess.Popen(cmd, env=env, cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"the 2-process run with a {fault} on rank 1 hung (no exit within {timeout} s)")
    return results


def test_nan_on_one_rank_is_skipped_by_both(tiny_ae_run, tmp_path):
    out = tmp_path / "nan"
    rank0, rank1 = run_two("nan", 2, tiny_ae_run, out, "--max-steps", "5")
    assert rank0.returncode == 0 and rank1.returncode == 0, rank0.stderr[-2000:] + rank1.stderr[-2000:]
    said = rank0.stdout + rank0.stderr
    assert "the loss of another process is not finite at step 2; skipping this batch once (on every process)" in said
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 5
    assert metrics["steps_per_process"] == [4, 4]  # both skipped step 2: 4 trained steps each


def test_sigterm_on_one_rank_stops_both_and_resumes_bit_exactly(tiny_ae_run, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert all(r.returncode == 0 for r in run_two("none", 0, tiny_ae_run, straight, "--max-steps", "6"))

    rank0, rank1 = run_two("sigterm", 2, tiny_ae_run, stopped, "--max-steps", "6")
    assert (rank0.returncode, rank1.returncode) == (143, 143), rank0.stderr[-2000:] + rank1.stderr[-2000:]
    assert "stopped by SIGTERM at step 3" in rank0.stderr and "stopped by SIGTERM at step 3" in rank1.stderr
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == ["step-00000003"]  # one checkpoint, by rank 0
    assert not (stopped / "pipeline").exists()

    resumed = run_two("none", 0, tiny_ae_run, stopped, "--max-steps", "6", "--resume")
    assert all(r.returncode == 0 for r in resumed), resumed[0].stderr[-2000:]
    for name in ("unet", "ema", "optimizer"):
        a = load_safetensors(straight / "checkpoints" / "step-00000006" / f"{name}.safetensors")
        b = load_safetensors(stopped / "checkpoints" / "step-00000006" / f"{name}.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after the resume"
