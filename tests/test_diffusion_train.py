"""``vqldm train-diffusion`` end to end on the tiny configs: CLI, export, resume equality, 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import diffusers
import pytest
import torch

from vqldm.plumbing.checkpoint import latest_checkpoint, load_safetensors
from vqldm.cli.main import main

REPO = Path(__file__).resolve().parent.parent
FAST = ["--set", "train.progress=false", "--set", "data.max_images=64", "--set", "cache.holdout_max_images=16",
        "--set", "train.image_every=1000", "--set", "train.sample_steps=2"]


def _train(ae, out, *extra):
    return main(["train-diffusion", "--config", "tiny", "--autoencoder", str(ae), "--data", "fashion-mnist",
                 "--out", str(out), *FAST, *extra])


def test_train_diffusion_cli_end_to_end(tiny_ae_run, tmp_path, capsys):
    out = tmp_path / "ldm"
    assert _train(tiny_ae_run, out, "--max-steps", "4", "--set", "train.image_every=4") == 0
    pipe = diffusers.DiffusionPipeline.from_pretrained(out / "pipeline")
    assert pipe.unet.config.sample_size == 8 and pipe.unet.config.in_channels == 3
    assert pipe.unet.config.num_class_embeds == 11  # fashion-mnist: 10 classes + null
    info = json.loads((out / "pipeline" / "vqldm.json").read_text())
    assert info["num_classes"] == 10 and info["null_class"] == 10 and info["image_size"] == 16
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 4 and metrics["processes"] == 1 and metrics["images_per_s"] > 0
    assert (out / "images" / "samples_00000004.png").is_file()
    assert (out / "config.yaml").is_file() and (out / "metrics.jsonl").is_file()
    # the exported UNet is the EMA, which differs from the raw weights of the last checkpoint
    ckpt = load_safetensors(latest_checkpoint(out) / "ema.safetensors")
    state = pipe.unet.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ckpt.items())
    # a second run without --resume into the same folder is refused with one line
    capsys.readouterr()
    assert _train(tiny_ae_run, out, "--max-steps", "4") == 2
    err = capsys.readouterr().err
    assert "--resume" in err and err.count("\n") == 1


def test_geometry_conflict_and_missing_autoencoder(tiny_ae_run, tmp_path, capsys):
    assert _train(tiny_ae_run, tmp_path / "a", "--set", "data.image_size=32") == 2
    assert "data.image_size" in capsys.readouterr().err
    assert _train(tmp_path / "nowhere", tmp_path / "b") == 2
    assert "--autoencoder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _train(tmp_path / "empty", tmp_path / "c") == 2
    assert "vqvae" in capsys.readouterr().err


@pytest.mark.slow  # three trainings, ~9 s; the fast lane resumes a diffusion run in test_trainkit_drift
def test_resume_matches_uninterrupted_run(tiny_ae_run, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--set", "train.checkpoint_every=3"]
    assert _train(tiny_ae_run, straight, "--max-steps", "6", *common) == 0
    assert _train(tiny_ae_run, resumed, "--max-steps", "3", *common) == 0
    assert _train(tiny_ae_run, resumed, "--max-steps", "6", "--resume", *common) == 0
    for name in ("unet", "ema"):
        a = load_safetensors(straight / "checkpoints" / "step-00000006" / f"{name}.safetensors")
        b = load_safetensors(resumed / "checkpoints" / "step-00000006" / f"{name}.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    # and the weights did move during the resumed half
    c = load_safetensors(resumed / "checkpoints" / "step-00000003" / "unet.safetensors")
    assert any(not torch.equal(c[k], b[k]) for k in c)


@pytest.mark.slow  # torchrun with 2 processes
def test_two_processes(tiny_ae_run, tmp_path):
    """`torchrun --standalone --nproc_per_node 2 -m vqldm train-diffusion ...` (README's CPU command): both
    processes train on a gloo group, the main process writes."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*launcher, "--standalone", "--nproc_per_node", "2",
           "-m", "vqldm", "train-diffusion", "--config", "tiny", "--autoencoder", str(tiny_ae_run),
           "--data", "fashion-mnist", "--out", str(out), "--max-steps", "4", *FAST, "--set", "train.checkpoint_every=2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps_per_process"] == [4, 4]
    assert metrics["global_batch"] == 2 * 8
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    pipe = diffusers.DiffusionPipeline.from_pretrained(out / "pipeline")
    assert pipe.unet.config.num_class_embeds == 11
