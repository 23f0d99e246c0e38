"""Super-resolution (issue 20): a latent UNet that sees the low-resolution image concatenated to its input,
trained from any folder by downsampling to the latent grid; diffusers' LDMSuperResolutionPipeline layout,
loaded and sampled with the same images; `vqldm generate --init-image` upscales."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, LDMSuperResolutionPipeline, UNet2DModel, VQModel
from PIL import Image

from vqldm.cli.main import main
from vqldm.pipelines.pipeline import load_pipeline
from vqldm.pipelines.superres_pipeline import VQSuperResolutionPipeline

FAST = ["--set", "train.progress=false", "--set", "data.max_images=64", "--set", "cache.holdout_max_images=8",
        "--set", "train.image_every=1000", "--set", "train.sample_steps=2", "--set", "model.class_conditional=false",
        "--set", "model.superresolution=true"]


@pytest.fixture(scope="module")
def compvis_shaped(tmp_path_factory):
    """A random folder shaped like CompVis/ldm-super-resolution-4x-openimages: an f4 VQModel with 3-channel
    latents, a UNet2DModel taking 6 channels (latents + RGB image) and predicting 3, DDIM; saved by diffusers."""
    torch.manual_seed(0)
    vq = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                 up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=1,
                 latent_channels=3, num_vq_embeddings=32, norm_num_groups=4, sample_size=64)
    unet = UNet2DModel(sample_size=16, in_channels=6, out_channels=3, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=8)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0155, clip_sample=False)
    folder = tmp_path_factory.mktemp("sr") / "ldm-super-resolution"
    LDMSuperResolutionPipeline(vq, unet, scheduler).save_pretrained(folder)
    return folder


def test_compvis_shaped_folder_gives_diffusers_images(compvis_shaped):
    ref = LDMSuperResolutionPipeline.from_pretrained(compvis_shaped)
    ref.set_progress_bar_config(disable=True)
    pipe = load_pipeline(compvis_shaped, channels_last=False)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, VQSuperResolutionPipeline) and pipe.upscale_factor == 4
    low = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    theirs = ref(low, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np").images
    ours = pipe(image=low, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert ours.shape == theirs.shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(ours, theirs)
    # a PIL image of a size multiple of 32 goes the same way (diffusers resizes others to a multiple of 32)
    img = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    a = ref(img, num_inference_steps=3, generator=torch.Generator().manual_seed(1), output_type="np").images
    b = pipe(image=img, num_inference_steps=3, generator=torch.Generator().manual_seed(1), output_type="np").images
    np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="needs image="):
        pipe(num_inference_steps=2)
    with pytest.raises(ValueError, match="sides divisible by 2"):
        pipe(image=torch.zeros(1, 3, 15, 16), num_inference_steps=2)
    with pytest.raises(ValueError, match="prompt does not apply"):
        pipe(image=low, prompt="x")


def test_generate_upscales_an_init_image(compvis_shaped, tmp_path, capsys):
    small = tmp_path / "small.png"
    Image.fromarray((np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8)).save(small)
    assert main(["generate", "--model", str(compvis_shaped), "--init-image", str(small), "--steps", "2",
                 "--out", str(tmp_path / "up") + "/", "--no-progress"]) == 0
    out = sorted((tmp_path / "up").glob("*.png"))
    assert len(out) == 1 and Image.open(out[0]).size == (64, 64)
    capsys.readouterr()
    assert main(["generate", "--model", str(compvis_shaped), "--out", str(tmp_path / "x.png")]) == 2
    assert "super-resolution model: pass --init-image" in capsys.readouterr().err
    assert main(["generate", "--model", str(compvis_shaped), "--init-image", str(small), "--class", "1",
                 "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "--class does not apply" in err and err.count("\n") == 1


def test_superres_training_exports_a_diffusers_superres_folder(tiny_ae_run, tmp_path):
    out = tmp_path / "sr"
    assert main(["train-diffusion", "--config", "tiny", "--autoencoder", str(tiny_ae_run), "--data", "fashion-mnist",
                 "--out", str(out), "--max-steps", "3", *FAST]) == 0
    index = json.loads((out / "pipeline" / "model_index.json").read_text())
    info = json.loads((out / "pipeline" / "vqldm.json").read_text())
    assert index["_class_name"] == "LDMSuperResolutionPipeline" and info["conditioning"] == "image"
    ref = LDMSuperResolutionPipeline.from_pretrained(out / "pipeline")
    assert ref.unet.config.in_channels == 3 + 1 and ref.unet.config.out_channels == 3  # latents + the grayscale image
    assert ref.vqvae.config.scaling_factor == 1.0  # the measured scale is folded into the exported vqvae
    pipe = load_pipeline(out / "pipeline", channels_last=False)
    low = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours = pipe(image=low, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert ours.shape == (2, 16, 16, 1) and np.isfinite(ours).all()
    # diffusers' pipeline takes in_channels // 2 latent channels, i.e. as many as the image has: a grayscale
    # model on 3-channel latents loads there but samples only in vqldm (RGB on 3 channels samples in both)
    again = pipe(image=low, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_array_equal(ours, again)


def test_superres_fine_tunes_a_compvis_shaped_folder(compvis_shaped, tmp_path):
    """--init of a published super-resolution pipeline: its UNet (latents + image in) is the start, trained on
    a new folder through its own vqvae, and the result still samples in diffusers' pipeline."""
    from vqldm.plumbing.checkpoint import load_safetensors

    data = tmp_path / "photos"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "ft"
    assert main(["train-diffusion", "--config", "tiny", "--autoencoder", str(compvis_shaped / "vqvae"), "--data", str(data),
                 "--out", str(out), "--init", str(compvis_shaped), "--max-steps", "2", *FAST,
                 "--set", "data.holdout_fraction=0.25", "--set", "train.lr=1e-12", "--set", "train.warmup_steps=0"]) == 0
    start = LDMSuperResolutionPipeline.from_pretrained(compvis_shaped).unet.state_dict()
    trained = load_safetensors(out / "checkpoints" / "step-00000002" / "unet.safetensors")
    assert all(torch.allclose(trained[f"unet.{k}"], v, atol=1e-6) for k, v in start.items())  # it started there
    ref = LDMSuperResolutionPipeline.from_pretrained(out / "pipeline")
    ref.set_progress_bar_config(disable=True)
    images = ref(torch.zeros(1, 3, 16, 16), num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 64, 64, 3)


def test_evaluate_generation_refuses_a_superres_model_in_one_line(compvis_shaped, tmp_path, capsys):
    assert main(["evaluate", "generation", "--model", str(compvis_shaped), "--num-samples", "8",
                 "--out", str(tmp_path / "ev"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "super-resolution model" in err and "bench_superres.py" in err and err.count("\n") == 1
