"""Two "nodes" on this machine: ``torchrun --nnodes 2 --node_rank 0|1`` with a localhost rendezvous (gloo,
one process per node) trains the same weights as one node with two processes -- the ranks, the batch
order and the reductions are the same; only the launcher's topology differs."""

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

pytestmark = pytest.mark.slow  # three 2-process runs

ARGS = ["-m", "vqldm", "train-diffusion", "--config", "tiny", "--data", "fashion-mnist", "--max-steps", "4",
        "--set", "train.progress=false", "--set", "train.image_every=100", "--set", "train.checkpoint_every=100"]


def launcher() -> list[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def test_two_nodes_train_the_weights_of_one_node_with_two_processes(tiny_ae_run, tmp_path):
    one_node = tmp_path / "one-node"
    proc = subprocess.run([*launcher(), "--standalone", "--nproc_per_node", "2", *ARGS, "--autoencoder", str(tiny_ae_run),
                           "--out", str(one_node)], env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    two_nodes, port = tmp_path / "two-nodes", free_port()
    nodes = [subprocess.Popen([*launcher(), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
                               "--master_addr", "127.0.0.1", "--master_port", str(port), *ARGS,
                               "--autoencoder", str(tiny_ae_run), "--out", str(two_nodes)],
                              env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    try:
        outputs = [n.communicate(timeout=300) for n in nodes]
    except subprocess.TimeoutExpired:
        for n in nodes:
            n.kill()
        pytest.fail("the two-node run hung")
    assert [n.returncode for n in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]

    # written once, by global rank 0 (node 0): one run folder, one set of checkpoints
    assert sorted(p.name for p in (two_nodes / "checkpoints").iterdir()) == ["step-00000004"]
    for name in ("unet", "ema", "optimizer"):
        a = load_safetensors(one_node / "checkpoints" / "step-00000004" / f"{name}.safetensors")
        b = load_safetensors(two_nodes / "checkpoints" / "step-00000004" / f"{name}.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name}: 2 nodes x 1 process differ from 1 node x 2 processes"

    # and the checkpoint resumes on another process count (one process here): the weights, optimizer, EMA
    # and step are restored exactly; the batches after it follow the new global batch, so the continuation
    # is not the one a 2-process run would have made
    proc = subprocess.run([sys.executable, *ARGS, "--autoencoder", str(tiny_ae_run), "--out", str(two_nodes), "--resume",
                           "--max-steps", "6"], env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "step 4" in proc.stdout
    assert json.loads((two_nodes / "metrics.json").read_text())["processes"] == 1
    assert (two_nodes / "checkpoints" / "step-00000006").is_dir()
