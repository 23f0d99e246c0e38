"""``--init``: train-autoencoder and train-diffusion start from published weights (a VQModel folder, an
LDM-shaped pipeline folder, a run folder, a Hub repo id), with the architecture of the init; shapes that do
not fit, pickles and an unreachable Hub are one line before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel, VQModel
from PIL import Image

from vqldm.autoencoder.model import AutoencoderModelConfig, VQAutoencoder, build_vqmodel
from vqldm.autoencoder.quantizer import QuantizerConfig
from vqldm.cli.main import main
from vqldm.plumbing.checkpoint import weights_sha256

AE_FAST = ["--set", "train.progress=false", "--set", "train.image_every=1000", "--set", "train.eval_max_images=8"]
LDM_FAST = ["--set", "train.progress=false", "--set", "train.image_every=1000", "--set", "train.sample_steps=2",
            "--set", "cache.holdout_max_images=4"]
TINY_LR = ["--set", "train.lr=1e-12", "--set", "train.warmup_steps=0"]  # the weights move by ~1e-12: still the init's


def gray_folder(root, classes=("a",), n=8):
    """n 16x16 grayscale PNGs per class (one subfolder per class)."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def published_vqmodel(channels=1) -> VQModel:
    """A VQModel of another architecture than the tiny preset's, published at 32 px with a planted scale."""
    torch.manual_seed(1)
    cfg = AutoencoderModelConfig(block_out_channels=[8, 8], layers_per_block=1, latent_channels=3, codebook_size=16,
                                 norm_num_groups=4, mid_block_add_attention=False)
    vq = build_vqmodel(cfg, 32, channels)
    vq.register_to_config(scaling_factor=123.0)
    return vq


def tiny_unet(in_channels=3, num_class_embeds=None) -> UNet2DModel:
    torch.manual_seed(2)
    return UNet2DModel(sample_size=8, in_channels=in_channels, out_channels=3, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=8, attention_head_dim=8, num_class_embeds=num_class_embeds)


def ldm_folder(path, unet: UNet2DModel) -> tuple:
    """An LDM-shaped pipeline folder (model_index.json, vqvae/, unet/, scheduler/), as diffusers writes one."""
    vq = published_vqmodel()
    vq.register_to_config(sample_size=16, scaling_factor=1.0)
    LDMPipeline(vqvae=vq, unet=unet, scheduler=DDIMScheduler()).save_pretrained(path)
    return path, vq


def one_error_line(capsys, argv) -> str:
    code = main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_train_autoencoder_starts_from_a_vqmodel_folder(tmp_path, capsys):
    init = published_vqmodel()
    init.save_pretrained(tmp_path / "published", safe_serialization=True)
    out = tmp_path / "run"
    argv = ["train-autoencoder", "--config", "tiny", "--data", str(gray_folder(tmp_path / "data")), "--out", str(out),
            "--init", str(tmp_path / "published"), "--max-steps", "2", *AE_FAST, *TINY_LR,
            "--set", "quantizer.codebook_update=gradient", "--set", "quantizer.restart_dead_codes=false"]
    assert main(argv) == 0
    assert "the preset's model.* keys and quantizer.init are ignored" in capsys.readouterr().out
    vq = VQModel.from_pretrained(out / "vqvae", use_safetensors=True)
    # the architecture is the init's, at the data's image size; config.yaml says so
    assert list(vq.config.block_out_channels) == [8, 8] and vq.config.num_vq_embeddings == 16
    assert vq.config.sample_size == 16
    model = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert model["block_out_channels"] == [8, 8] and model["codebook_size"] == 16
    # it started from the init's weights (its codebook too, not a k-means of encoder outputs)
    ref = init.state_dict()
    for key, value in vq.state_dict().items():
        assert torch.allclose(value, ref[key], atol=1e-8), key
    # the scaling factor is measured again on these images
    scale = json.loads((out / "metrics.json").read_text())["scaling_factor"]
    assert vq.config.scaling_factor == pytest.approx(scale) and abs(scale - 123.0) > 1


def test_ema_codebook_starts_from_the_published_codes(tmp_path):
    """With the default EMA quantizer (a k-means start without --init) the codes are the published ones,
    moved by the EMA only: a code no batch chose is exactly where it was. The init is a vqldm run folder."""
    published = tmp_path / "ae"
    published_vqmodel().save_pretrained(published / "vqvae", safe_serialization=True)
    (published / "config.yaml").write_text("data: {}\n")
    out = tmp_path / "run"
    assert main(["train-autoencoder", "--config", "tiny", "--data", str(gray_folder(tmp_path / "data")), "--out", str(out),
                 "--init", str(published), "--max-steps", "2", *AE_FAST]) == 0
    codes = VQModel.from_pretrained(out / "vqvae").quantize.embedding.weight
    start = published_vqmodel().quantize.embedding.weight
    unmoved = (codes - start).abs().amax(dim=1) < 1e-6  # codes no batch chose (k-means would have moved them all)
    assert 4 <= int(unmoved.sum()) < len(codes)


def test_simvq_keeps_the_codebook_and_fsq_refuses(tmp_path, capsys):
    vq = published_vqmodel()
    before = vq.quantize.embedding.weight.detach().clone()
    model = VQAutoencoder(vq, QuantizerConfig(kind="simvq"), keep_codebook=True)
    assert torch.equal(model.quantizer.codes(), before)  # E = C W with C the published codes, W = I
    vq.save_pretrained(tmp_path / "published", safe_serialization=True)
    line = one_error_line(capsys, ["train-autoencoder", "--config", "tiny", "--data", str(gray_folder(tmp_path / "d")),
                                   "--out", str(tmp_path / "run"), "--init", str(tmp_path / "published"),
                                   "--set", "quantizer.kind=fsq", *AE_FAST])
    assert "quantizer.kind=fsq" in line and not (tmp_path / "run").exists()


def test_init_of_other_channels_is_one_line_before_training(tmp_path, capsys):
    published_vqmodel(channels=3).save_pretrained(tmp_path / "rgb", safe_serialization=True)
    line = one_error_line(capsys, ["train-autoencoder", "--config", "tiny", "--data", str(gray_folder(tmp_path / "d")),
                                   "--out", str(tmp_path / "run"), "--init", str(tmp_path / "rgb"), *AE_FAST])
    assert "3-channel images" in line and "the data has 1 channel (data.channels)" in line
    assert not (tmp_path / "run").exists()


def test_pickles_are_refused(tmp_path, capsys):
    folder = tmp_path / "pickled"
    published_vqmodel().save_pretrained(folder, safe_serialization=False)
    assert not list(folder.glob("*.safetensors")) and list(folder.glob("*.bin"))
    base = ["train-autoencoder", "--config", "tiny", "--data", str(gray_folder(tmp_path / "d")), "--out", str(tmp_path / "run")]
    line = one_error_line(capsys, [*base, "--init", str(folder)])
    assert "pickle" in line and "vqldm convert" in line
    line = one_error_line(capsys, [*base, "--init", str(next(folder.glob("*.bin")))])
    assert "pickle" in line
    assert not (tmp_path / "run").exists()


def test_unreachable_hub_name_is_one_line(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = one_error_line(capsys, ["train-autoencoder", "--config", "tiny", "--data", str(gray_folder(tmp_path / "d")),
                                   "--out", str(tmp_path / "run"), "--init", "no-such-owner/no-such-vqmodel", *AE_FAST])
    assert "'no-such-owner/no-such-vqmodel'" in line and "pass a local folder" in line
    assert not (tmp_path / "run").exists()


def test_train_diffusion_starts_from_an_ldm_pipeline_folder(tmp_path, capsys):
    init_unet = tiny_unet()
    ldm, vq = ldm_folder(tmp_path / "ldm", init_unet)
    out = tmp_path / "run"
    # the tiny preset is class-conditional with another UNet: the init's (unconditional) architecture wins
    assert main(["train-diffusion", "--config", "tiny", "--autoencoder", str(ldm), "--init", str(ldm),
                 "--data", str(gray_folder(tmp_path / "d", classes=("a", "b"))), "--labels", "folders", "--out", str(out),
                 "--max-steps", "2", *LDM_FAST, *TINY_LR]) == 0
    log = capsys.readouterr().out
    assert "the preset's model.* keys are ignored; the data's class labels are not used" in log
    unet = UNet2DModel.from_pretrained(out / "pipeline" / "unet")
    assert list(unet.config.block_out_channels) == [8, 16] and unet.config.num_class_embeds is None
    ref = init_unet.state_dict()
    for key, value in unet.state_dict().items():
        assert torch.allclose(value, ref[key], atol=1e-8), key
    info = json.loads((out / "pipeline" / "vqldm.json").read_text())
    assert info["vqvae_weights_sha256"] == weights_sha256(vq) and info["num_classes"] == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["class_conditional"] is False


def test_diffusion_init_shapes_that_do_not_fit_are_one_line(tmp_path, capsys):
    data = str(gray_folder(tmp_path / "d", classes=("a", "b")))
    ldm, _ = ldm_folder(tmp_path / "ldm", tiny_unet(in_channels=4))
    base = ["train-diffusion", "--config", "tiny", "--autoencoder", str(ldm), "--data", data, "--out", str(tmp_path / "run"),
            *LDM_FAST]
    line = one_error_line(capsys, [*base, "--init", str(ldm)])
    assert "denoises 4x8x8 latents" in line and "makes 3x8x8 latents" in line
    conditional, _ = ldm_folder(tmp_path / "cond", tiny_unet(num_class_embeds=4))
    line = one_error_line(capsys, [*base, "--labels", "folders", "--init", str(conditional / "unet")])
    assert "class-conditional on 3 classes" in line and "the data has 2 classes" in line
    line = one_error_line(capsys, [*base, "--init", str(tmp_path / "d")])  # an image folder: no UNet in it
    assert "holds no unet/ folder" in line
    assert not (tmp_path / "run").exists()


def test_resume_of_an_init_run_needs_no_init_flag(tmp_path, capsys):
    """The checkpoints record --init: `--resume` alone rebuilds the init's architecture and continues."""
    published_vqmodel().save_pretrained(tmp_path / "published", safe_serialization=True)
    out = tmp_path / "run"
    base = ["train-autoencoder", "--config", "tiny", "--data", str(gray_folder(tmp_path / "data")), "--out", str(out),
            *AE_FAST, "--set", "train.checkpoint_every=2"]
    assert main([*base, "--init", str(tmp_path / "published"), "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main([*base, "--max-steps", "4", "--resume"]) == 0
    assert f"resuming a run that started from --init {tmp_path / 'published'}" in capsys.readouterr().out
    vq = VQModel.from_pretrained(out / "vqvae", use_safetensors=True)
    assert list(vq.config.block_out_channels) == [8, 8]
    assert json.loads((out / "metrics.json").read_text())["step"] == 4
