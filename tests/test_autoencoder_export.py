"""The exported ``run/vqvae`` is a plain diffusers VQModel that decodes exactly what vqldm trained, with the
measured scaling factor (1 / std of the pre-quantization latents over the training images) in its config."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import VQModel
from safetensors.torch import load_file

from vqldm.plumbing.checkpoint import latest_checkpoint, load_training_checkpoint
from vqldm.plumbing.config import load_config
from vqldm.data.sources import load_datasets
from vqldm.autoencoder.model import VQAutoencoder, build_vqmodel
from vqldm.autoencoder.config import AutoencoderRunConfig


@pytest.fixture(scope="module")
def run(tiny_ae_run):
    """(run folder, its resolved config, its training split, the exported VQModel, vqldm's own model)."""
    cfg = load_config(AutoencoderRunConfig, tiny_ae_run / "config.yaml")
    data = load_datasets(cfg.data.source, cfg.data, log=lambda m: None, progress=False)
    vq = VQModel.from_pretrained(tiny_ae_run / "vqvae").eval()
    files, state = load_training_checkpoint(latest_checkpoint(tiny_ae_run))
    own = VQAutoencoder(build_vqmodel(cfg.model, cfg.data.image_size, cfg.data.channels), cfg.quantizer)
    own.load_state_dict(files["model"])
    own.eval()
    return tiny_ae_run, cfg, data, vq, own, state


def test_diffusers_decode_equals_vqldm_reconstruction(run):
    run_dir, cfg, data, vq, own, state = run
    x, _ = data.holdout.batch(torch.arange(64))
    with torch.no_grad():
        h = vq.encode(x).latents
        diffusers_rec = vq.decode(h).sample  # diffusers' own nearest-code lookup, then decode
        own_rec, q, own_h = own(x)
    assert (diffusers_rec - own_rec).abs().max().item() < 1e-5
    assert torch.equal(h, own_h)
    _, _, (_, _, idx) = vq.quantize(h)
    assert torch.equal(idx.view(q.indices.shape), q.indices)
    assert q.indices.unique().numel() > 1  # a trained codebook, not one code for everything


def test_exported_weights_are_the_trained_weights_and_nothing_else(run):
    run_dir, cfg, data, vq, own, state = run
    exported = load_file(str(run_dir / "vqvae" / "diffusion_pytorch_model.safetensors"))
    trained = own.vqmodel.state_dict()
    assert set(exported) == set(trained)  # no EMA counters, no discriminator, no optimizer state
    for name, tensor in trained.items():
        assert torch.equal(exported[name], tensor), name
    assert state["step"] == cfg.train.max_steps == 20


def test_exported_config(run):
    run_dir, cfg, data, vq, own, state = run
    config = json.loads((run_dir / "vqvae" / "config.json").read_text())
    assert config["_class_name"] == "VQModel"
    assert config["num_vq_embeddings"] == cfg.model.codebook_size
    assert config["in_channels"] == config["out_channels"] == cfg.data.channels
    assert config["sample_size"] == cfg.data.image_size
    assert config["scaling_factor"] != pytest.approx(0.18215)  # never the KL default
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["scaling_factor"] == pytest.approx(config["scaling_factor"], rel=1e-9)
    for key in ("psnr", "ssim", "codebook_usage", "perplexity", "dead_codes"):
        assert key in metrics["holdout"]


def test_scaling_factor_is_one_over_std_of_prequantization_latents(run):
    run_dir, cfg, data, vq, own, state = run
    assert len(data.train) == 256  # data.max_images of the fixture: every training image is measured
    with torch.no_grad():
        x, _ = data.train.batch(torch.arange(len(data.train)))
        h = vq.encode(x).latents.double()  # pre-quantization latents (LDM convention)
    expected = 1.0 / h.std(unbiased=False).item()
    assert vq.config.scaling_factor == pytest.approx(expected, rel=1e-5)
    assert (h * vq.config.scaling_factor).std(unbiased=False).item() == pytest.approx(1.0, rel=1e-5)
