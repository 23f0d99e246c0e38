"""VQLatentDiffusionPipeline invariants on tiny random-weight models (seconds each, CPU)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel, VQModel
from PIL import Image

from vqldm.diffusion.sampling import guided_prediction
from vqldm.pipelines.pipeline import VQLatentDiffusionPipeline, make_scheduler, slerp
from test_pipeline_helpers import tiny_pipeline

STEPS = 4


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def uncond():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def cond():
    return tiny_pipeline(num_classes=3)


def test_same_seed_gives_bit_identical_images(cond):
    a = cond(batch_size=2, class_labels=[0, 2], guidance_scale=2.5, num_inference_steps=STEPS, generator=gen(3), output_type="np").images
    b = cond(batch_size=2, class_labels=[0, 2], guidance_scale=2.5, num_inference_steps=STEPS, generator=gen(3), output_type="np").images
    assert np.array_equal(a, b)
    c = cond(batch_size=2, class_labels=[0, 2], guidance_scale=2.5, num_inference_steps=STEPS, generator=gen(4), output_type="np").images
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("name", ["ddpm", "dpm", "euler", "unipc"])
def test_every_scheduler_is_deterministic(name):
    pipe = tiny_pipeline()
    pipe.set_scheduler(name)
    assert pipe.scheduler.config.beta_start == 0.0015  # the training schedule is carried over
    a = pipe(batch_size=1, num_inference_steps=3, generator=gen(1), output_type="np").images
    b = pipe(batch_size=1, num_inference_steps=3, generator=gen(1), output_type="np").images
    assert np.array_equal(a, b) and np.isfinite(a).all()


def test_dpm_is_dpmsolver_plus_plus():
    s = make_scheduler("dpm", DDIMScheduler(prediction_type="v_prediction").config)
    assert type(s).__name__ == "DPMSolverMultistepScheduler"
    assert s.config.algorithm_type == "dpmsolver++" and s.config.prediction_type == "v_prediction"


def test_switching_schedulers_keeps_the_sampler_settings():
    """DPM-Solver configs have no clip_sample key: going DPM -> DDIM must not switch clipping on (the
    latents are unit-variance, clipping them to [-1, 1] ruins samples) nor change the final alpha."""
    pipe = tiny_pipeline()
    ddim = dict(pipe.scheduler.config)
    pipe.set_scheduler("dpm")
    pipe.set_scheduler("ddim")
    for key in ("clip_sample", "set_alpha_to_one", "steps_offset", "beta_schedule", "prediction_type"):
        assert pipe.scheduler.config[key] == ddim[key], key
    from_dpm = make_scheduler("ddim", make_scheduler("dpm", ddim).config)  # no pipeline: the defaults apply
    assert from_dpm.config.clip_sample is False and from_dpm.config.set_alpha_to_one is False


def test_default_scheduler_options_apply_to_the_default_scheduler(tmp_path):
    pipe = tiny_pipeline()
    pipe.info.update(default_scheduler="unipc", default_scheduler_options={"timestep_spacing": "trailing"})
    pipe.set_scheduler("unipc")
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler" and pipe.scheduler.config.timestep_spacing == "trailing"
    pipe.set_scheduler("dpm")
    assert pipe.scheduler.config.timestep_spacing != "trailing"
    with pytest.raises(ValueError, match="no option 'nonsense'"):
        pipe.set_scheduler("unipc", nonsense=1)


def test_guidance_one_is_the_conditional_prediction_and_skips_the_null_half(cond):
    x = torch.randn(2, 3, 8, 8, generator=gen(0))
    t = torch.tensor(500)
    labels = torch.tensor([1, 2])
    with torch.inference_mode():
        direct = cond.unet(x, t, class_labels=labels).sample
        guided = guided_prediction(cond.unet, x, t, labels, 1.0, cond.null_class)
        assert torch.equal(direct, guided)
        # s != 1: eps_null + s (eps_cond - eps_null), with the null class index = num_classes
        null = cond.unet(x, t, class_labels=torch.full_like(labels, 3)).sample
        g3 = guided_prediction(cond.unet, x, t, labels, 3.0, cond.null_class)
        assert torch.allclose(g3, null + 3.0 * (direct - null), atol=1e-4)

    sizes = []
    hook = cond.unet.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        cond(batch_size=2, class_labels=[0, 1], guidance_scale=1.0, num_inference_steps=STEPS, output_type="latent")
        assert sizes == [2] * STEPS
        sizes.clear()
        cond(batch_size=2, class_labels=[0, 1], guidance_scale=3.0, num_inference_steps=STEPS, output_type="latent")
        assert sizes == [4] * STEPS  # one batched call per step: conditional + null halves
    finally:
        hook.remove()


def test_output_types(cond):
    kw = dict(batch_size=2, class_labels=1, num_inference_steps=2)
    pil = cond(output_type="pil", generator=gen(0), **kw).images
    assert len(pil) == 2 and pil[0].size == (16, 16) and pil[0].mode == "RGB"
    np_images = cond(output_type="np", generator=gen(0), **kw).images
    assert np_images.shape == (2, 16, 16, 3) and np_images.min() >= 0 and np_images.max() <= 1
    pt = cond(output_type="pt", generator=gen(0), **kw).images
    assert pt.shape == (2, 3, 16, 16)
    assert np.allclose(pt.permute(0, 2, 3, 1).numpy(), np_images)
    lat = cond(output_type="latent", **kw).images
    assert lat.shape == (2, 3, 8, 8)
    assert cond(output_type="np", return_dict=False, **kw)[0].shape == (2, 16, 16, 3)


def test_grayscale_pil_output():
    pipe = tiny_pipeline(channels=1)
    img = pipe(batch_size=1, num_inference_steps=2, generator=gen(0)).images[0]
    assert img.mode == "L" and img.size == (16, 16)


def test_quantize_flag_changes_only_decoding(uncond):
    kw = dict(batch_size=1, num_inference_steps=2)
    lat = uncond(output_type="latent", generator=gen(0), **kw).images
    with torch.inference_mode():
        q = uncond.vqvae.decode(lat / 0.8).sample
        nq = uncond.vqvae.decode(lat / 0.8, force_not_quantize=True).sample
    assert torch.allclose(uncond(output_type="pt", generator=gen(0), **kw).images, (q / 2 + 0.5).clamp(0, 1), atol=1e-6)
    assert torch.allclose(uncond(output_type="pt", quantize=False, generator=gen(0), **kw).images, (nq / 2 + 0.5).clamp(0, 1), atol=1e-6)


def test_decode_batch_size_gives_the_same_images(uncond):
    kw = dict(batch_size=3, num_inference_steps=2, output_type="np")
    assert np.allclose(uncond(generator=gen(0), **kw).images, uncond(decode_batch_size=1, generator=gen(0), **kw).images, atol=1e-5)


def test_unconditional_folder_matches_plain_ldmpipeline(uncond, tmp_path):
    uncond.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "LDMPipeline"
    plain = DiffusionPipeline.from_pretrained(tmp_path / "pipe", use_safetensors=True)
    assert type(plain).__name__ == "LDMPipeline"
    plain.set_progress_bar_config(disable=True)
    ours = VQLatentDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    ours.set_progress_bar_config(disable=True)
    for steps in (3, 10):
        expected = plain(batch_size=2, generator=gen(7), num_inference_steps=steps, output_type="np").images
        got = ours(batch_size=2, generator=gen(7), num_inference_steps=steps, output_type="np").images
        assert np.array_equal(expected, got)
        assert np.array_equal(got, uncond(batch_size=2, generator=gen(7), num_inference_steps=steps, output_type="np").images)


def test_save_load_round_trip_conditional(cond, tmp_path):
    cond.info = {"class_names": ["a", "b", "c"]}
    try:
        cond.save_pretrained(tmp_path / "pipe")
    finally:
        cond.info = {}
    loaded = VQLatentDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.num_classes == 3 and loaded.null_class == 3 and loaded.class_names == ["a", "b", "c"]
    assert loaded.class_index("C") == 2
    kw = dict(batch_size=2, class_labels=[2, 0], guidance_scale=2.0, num_inference_steps=STEPS, output_type="np")
    assert np.array_equal(cond(generator=gen(5), **kw).images, loaded(generator=gen(5), **kw).images)


def _compvis_shaped_folder(root):
    """The CompVis/ldm-celebahq-256 layout at tiny widths: f=4 VQ (3 latent channels), DDIM on the LDM
    schedule, and a vqvae/config.json WITHOUT scaling_factor."""
    torch.manual_seed(0)
    vqvae = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                    up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=1,
                    latent_channels=3, num_vq_embeddings=64, sample_size=32, norm_num_groups=4)
    vqvae.quantize.embedding.weight.data.normal_()  # a spread-out codebook, so the latent scale matters
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       attention_head_dim=8, norm_num_groups=4)
    sched = DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="linear", clip_sample=False, num_train_timesteps=1000)
    vqvae.save_pretrained(root / "vqvae", safe_serialization=True)
    unet.save_pretrained(root / "unet", safe_serialization=True)
    sched.save_pretrained(root / "scheduler")
    cfg = json.loads((root / "vqvae" / "config.json").read_text())
    cfg.pop("scaling_factor")
    (root / "vqvae" / "config.json").write_text(json.dumps(cfg))
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "LDMPipeline", "_diffusers_version": "0.0.0",
        "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DModel"], "vqvae": ["diffusers", "VQModel"],
    }))
    return root


def test_compvis_shaped_folder_uses_scaling_one(tmp_path, caplog):
    folder = _compvis_shaped_folder(tmp_path / "ldm")
    with caplog.at_level(logging.WARNING, logger="vqldm.autoencoder.model"):
        pipe = VQLatentDiffusionPipeline.from_pretrained(folder)
    assert any("scaling_factor" in r.getMessage() for r in caplog.records)
    assert pipe.vqvae.config.scaling_factor == 1.0 and pipe.num_classes == 0
    pipe.set_progress_bar_config(disable=True)
    kw = dict(batch_size=1, num_inference_steps=3)
    lat = pipe(generator=gen(0), output_type="latent", **kw).images
    images = pipe(generator=gen(0), output_type="pt", **kw).images
    with torch.inference_mode():
        expected = (pipe.vqvae.decode(lat).sample / 2 + 0.5).clamp(0, 1)  # latents / 1.0
    assert images.shape == (1, 3, 32, 32)
    assert torch.allclose(images, expected, atol=1e-6)
    # plain diffusers divides by the KL default 0.18215 here (issue #6725): a different (wrong) image
    plain = DiffusionPipeline.from_pretrained(folder, use_safetensors=True)
    plain.set_progress_bar_config(disable=True)
    assert plain.vqvae.config.scaling_factor == pytest.approx(0.18215)
    wrong = plain(generator=gen(0), output_type="np", **kw).images
    assert not np.allclose(wrong, images.permute(0, 2, 3, 1).numpy(), atol=1e-3)


def test_img2img_strength_zero_is_the_reconstruction(uncond):
    x = torch.rand(1, 3, 16, 16, generator=gen(2)) * 2 - 1
    out = uncond(image=x, strength=0.0, num_inference_steps=10, output_type="pt").images
    with torch.inference_mode():
        recon = (uncond.vqvae(x).sample / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(out, recon, atol=1e-4)
    # a PIL init image goes through the same path
    pil = Image.fromarray(((x[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())
    out_pil = uncond(image=pil, strength=0.0, num_inference_steps=10, output_type="pt").images
    assert torch.allclose(out_pil, recon, atol=2e-2)
    # strength > 0 actually denoises, and stays deterministic
    a = uncond(image=x, strength=0.5, num_inference_steps=10, generator=gen(1), output_type="pt").images
    b = uncond(image=x, strength=0.5, num_inference_steps=10, generator=gen(1), output_type="pt").images
    assert torch.equal(a, b) and not torch.allclose(a, recon, atol=1e-3)


@pytest.mark.parametrize("name", ["ddim", "dpm", "euler"])
def test_inpainting_keeps_the_known_latents(name):
    pipe = tiny_pipeline()
    pipe.set_scheduler(name)
    x = torch.rand(2, 3, 16, 16, generator=gen(2)) * 2 - 1
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :, :8] = 1  # regenerate the left half, keep the right half
    with torch.inference_mode():
        known = pipe.vqvae.encode(x).latents * 0.8
    lat = pipe(image=x, mask_image=mask, num_inference_steps=5, generator=gen(0), output_type="latent").images
    assert torch.allclose(lat[..., 4:], known[..., 4:], atol=1e-5)
    assert not torch.allclose(lat[..., :4], known[..., :4], atol=1e-2)


def test_mask_image_as_pil_white_means_regenerate(uncond):
    x = torch.rand(1, 3, 16, 16, generator=gen(2)) * 2 - 1
    arr = np.zeros((16, 16), dtype=np.uint8)
    arr[8:, :] = 255  # regenerate the bottom half
    with torch.inference_mode():
        known = uncond.vqvae.encode(x).latents * 0.8
    lat = uncond(image=x, mask_image=Image.fromarray(arr), num_inference_steps=4, generator=gen(0), output_type="latent").images
    assert torch.allclose(lat[..., :4, :], known[..., :4, :], atol=1e-5)


def test_interpolation_endpoints_are_the_seeds_images(cond):
    kw = dict(class_labels=1, guidance_scale=2.0, num_inference_steps=STEPS, output_type="np")
    frames = cond.interpolate(11, 12, frames=4, **kw).images
    first = cond(batch_size=1, generator=gen(11), **kw).images
    last = cond(batch_size=1, generator=gen(12), **kw).images
    assert frames.shape == (4, 16, 16, 3)
    assert np.allclose(frames[0], first[0], atol=1e-4) and np.allclose(frames[-1], last[0], atol=1e-4)
    assert not np.allclose(frames[1], frames[0], atol=1e-3)


def test_slerp_keeps_the_norm():
    a, b = torch.randn(1, 3, 16, 16, generator=gen(0)), torch.randn(1, 3, 16, 16, generator=gen(1))
    mid = slerp(a, b, 0.5)
    assert abs(mid.norm() / a.norm() - 1) < 0.05
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)


def test_python_api_errors(cond, uncond):
    """Misuse of the Python API is a ValueError / TypeError naming the parameter, never a command-line flag."""
    from vqldm.pipelines.sampler import ModelFolderError

    cases = [
        (lambda: cond(class_labels=3, num_inference_steps=1), ValueError, "out of range"),
        (lambda: cond(class_labels=[0, 1], batch_size=3, num_inference_steps=1), ValueError, "class_labels for batch_size 3"),
        (lambda: cond(class_labels=0, guidance_scale=float("nan"), num_inference_steps=1), ValueError, "guidance_scale must be a finite"),
        (lambda: cond(guidance_scale=2.0, num_inference_steps=1), ValueError, "guidance_scale=2 needs class_labels"),
        (lambda: uncond(guidance_scale=2.0, num_inference_steps=1), ValueError, "unconditional"),
        (lambda: uncond(class_labels=0, num_inference_steps=1), ValueError, "unconditional"),
        (lambda: uncond(num_inference_steps=0), ValueError, "num_inference_steps must be in 1..1000"),
        (lambda: uncond(num_inference_steps=1001), ValueError, "num_inference_steps must be in 1..1000"),
        (lambda: uncond(num_inference_steps=2.5), TypeError, ""),
        (lambda: uncond(num_inference_steps=1, output_type="png"), ValueError, "output_type must be one of"),
        (lambda: uncond(num_inference_steps=1, batch_size=0), ValueError, "batch_size must be >= 1"),
        (lambda: uncond(num_inference_steps=1, strength=0.5), ValueError, "strength needs image"),
        (lambda: uncond(num_inference_steps=1, mask_image=torch.ones(1, 1, 16, 16)), ValueError, "mask_image needs image"),
        (lambda: uncond(num_inference_steps=1, image=torch.zeros(1, 3, 16, 16), strength=1.5), ValueError, "strength must be in [0, 1]"),
        (lambda: uncond(num_inference_steps=1, image=torch.zeros(1, 4, 16, 16)), ValueError, "image tensor must be B x 3"),
        (lambda: uncond(num_inference_steps=1, steps=2), TypeError, "steps"),  # a typo is not swallowed
        (lambda: uncond.interpolate(0, 1, frames=1, num_inference_steps=1), ValueError, "frames must be >= 2"),
        (lambda: uncond.interpolate(0, 1, batch_size=4, num_inference_steps=1), TypeError, "batch_size"),
        (lambda: uncond.choose_unet_path("fast", 1), ValueError, "unknown UNet path 'fast'"),
        (lambda: uncond.use_autocast("fp16"), ValueError, "for CUDA GPUs"),
        (lambda: uncond.class_index("shirt"), ValueError, "unconditional"),
        (lambda: make_scheduler("lms", uncond.scheduler.config), ValueError, "unknown scheduler 'lms'"),
        (lambda: VQLatentDiffusionPipeline(uncond.vqvae, UNet2DModel(sample_size=8, in_channels=4, out_channels=4,
                 block_out_channels=(8,), norm_num_groups=4, down_block_types=("DownBlock2D",),
                 up_block_types=("UpBlock2D",)), uncond.scheduler), ModelFolderError, "latent channels"),
    ]
    for call, kind, fragment in cases:
        with pytest.raises(kind) as info:
            call()
        message = str(info.value)
        assert fragment in message, (fragment, message)
        assert "--" not in message and "UserError" not in type(info.value).__name__, message  # no flag words
    assert issubclass(ModelFolderError, ValueError)


def test_default_guidance_is_one_rule(cond, uncond):
    """vqldm.json's default_guidance applies to calls with class labels and no guidance_scale; nothing else."""
    cond.info = {"default_guidance": 2.5}
    try:
        assert cond.default_guidance == 2.5 and uncond.default_guidance == 1.0
        kw = dict(batch_size=2, class_labels=[0, 1], num_inference_steps=2, output_type="latent")
        default = cond(generator=gen(4), **kw).images
        assert torch.equal(default, cond(generator=gen(4), guidance_scale=2.5, **kw).images)
        assert not torch.equal(default, cond(generator=gen(4), guidance_scale=1.0, **kw).images)
        unlabelled = cond(batch_size=2, num_inference_steps=2, output_type="latent", generator=gen(4)).images  # null class, unguided
        assert torch.equal(unlabelled, cond(batch_size=2, num_inference_steps=2, output_type="latent", generator=gen(4),
                                            guidance_scale=1.0).images)
    finally:
        cond.info = {}
    uncond.info = {"default_guidance": 3.0}  # an unconditional model has nothing to guide towards
    try:
        assert uncond.default_guidance == 1.0
    finally:
        uncond.info = {}


def test_both_pipelines_are_image_samplers(uncond, cond):
    from vqldm.pipelines.sampler import ImageSampler

    for pipe in (uncond, cond):
        assert isinstance(pipe, ImageSampler)
        assert pipe.image_shape == (3, 16, 16) and pipe.max_inference_steps == 1000
        assert pipe.sampler_name == "DDIMScheduler" and pipe.resolve_steps(None) == 50 and pipe.resolve_steps(7) == 7
