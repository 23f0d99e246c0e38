"""The 256 px presets end to end: ``ldm-vq-f4-256`` -> ``celebahq-256`` -> ``vqldm generate`` on a folder of
256x256 JPEGs, through the CLI. Only widths, batch and evaluation sizes are shrunk (so it runs in seconds
on CPU); the geometry is the presets': 256 px RGB, f = 4, 3 latent channels, codebook vectors of the
latent width, a 4-level UNet with attention at the three lower resolutions."""

from __future__ import annotations

import json

import diffusers
import numpy as np
import pytest
from PIL import Image, ImageDraw

from vqldm.autoencoder.config import load_autoencoder_config
from vqldm.cli.main import main
from vqldm.autoencoder.model import latent_shape
from vqldm.diffusion.model import unet_latent_shape

pytestmark = pytest.mark.slow  # 256 px through both trainers and generate

AE_PRESET, LDM_PRESET = "ldm-vq-f4-256", "celebahq-256"
QUIET = ["--set", "train.progress=false"]
# widths and sizes only; image size, downsampling, latent channels and codebook dimension stay the preset's
AE_SMALL = ["--set", "model.block_out_channels=[8,16,16]", "--set", "model.layers_per_block=1",
            "--set", "model.norm_num_groups=4", "--set", "model.codebook_size=64", "--set", "quantizer.kmeans_iters=2",
            "--set", "loss.disc_channels=8", "--set", "train.batch_size=2", "--set", "train.eval_batch_size=4",
            # the preset's discriminator starts at step 50001; step 2 of this run takes the adversarial path
            "--set", "loss.disc_start=1"]
LDM_SMALL = ["--set", "model.block_out_channels=[8,16,16,32]", "--set", "model.layers_per_block=1",
             "--set", "model.attention_head_dim=8", "--set", "model.norm_num_groups=4", "--set", "train.batch_size=2",
             "--set", "train.num_sample_images=2", "--set", "train.sample_steps=2", "--set", "cache.encode_batch_size=4"]


def _jpeg_folder(root, count=12, size=256):
    """``count`` RGB JPEGs of ``size`` px: a flat colour with a few discs and squares of other colours."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x, y = (int(v) for v in rng.integers(0, size * 3 // 4, 2))
            s = int(rng.integers(size // 10, size // 4))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape([x, y, x + s, y + s], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        img.save(root / f"{i:02d}.jpg", quality=90)
    return root


def test_256px_presets_end_to_end(tmp_path, capsys):
    data = _jpeg_folder(tmp_path / "images")
    ae, ldm, grid = tmp_path / "ae", tmp_path / "ldm", tmp_path / "samples.png"
    code = main(["train-autoencoder", "--config", AE_PRESET, "--data", str(data), "--out", str(ae), "--max-steps", "2",
                 *QUIET, *AE_SMALL])
    assert code == 0, capsys.readouterr().err
    preset = load_autoencoder_config(AE_PRESET).model
    vq = diffusers.VQModel.from_pretrained(ae / "vqvae")
    assert vq.config.sample_size == 256 and vq.config.in_channels == 3
    assert len(vq.config.block_out_channels) == len(preset.block_out_channels)  # same f
    assert vq.config.latent_channels == preset.latent_channels and vq.config.vq_embed_dim == preset.vq_embed_dim
    assert latent_shape(vq.config) == (3, 64, 64)
    rows = [json.loads(line) for line in (ae / "metrics.jsonl").read_text().splitlines()]
    assert any("train/d_weight" in row for row in rows)  # the discriminator ran at 256 px

    code = main(["train-diffusion", "--config", LDM_PRESET, "--autoencoder", str(ae), "--data", str(data),
                 "--out", str(ldm), "--max-steps", "2", *QUIET, *LDM_SMALL])
    assert code == 0, capsys.readouterr().err
    pipeline = ldm / "pipeline"
    unet_config = json.loads((pipeline / "unet" / "config.json").read_text())
    assert unet_latent_shape(unet_config) == latent_shape(vq.config)
    assert json.loads((pipeline / "vqvae" / "config.json").read_text())["sample_size"] == 256
    assert json.loads((pipeline / "vqldm.json").read_text())["image_size"] == 256

    code = main(["generate", "--model", str(pipeline), "--num-images", "2", "--steps", "2", "--no-progress",
                 "--out", str(grid)])
    assert code == 0, capsys.readouterr().err
    image = Image.open(grid)
    assert image.mode == "RGB" and image.size == (2 + 2 * (256 + 2), 2 + 256 + 2)  # one row of two, padding 2
