"""Latent cache (round trip, reuse, invalidation, mirrored view), UNet sizing, shape checks, export."""

from __future__ import annotations

import json

import diffusers
import pytest
import torch

from vqldm.data.splits import Datasets, ArraySplit
from vqldm.plumbing.checkpoint import weights_sha256
from vqldm.plumbing.errors import UserError
from vqldm.autoencoder.model import AutoencoderModelConfig, build_vqmodel
from vqldm.diffusion.config import ObjectiveConfig, UNetConfig
from vqldm.latents.cache import CacheConfig
from vqldm.diffusion.export import export_pipeline_folder
from vqldm.plumbing.model_folder import read_vqldm_json
from vqldm.latents.cache import LatentSplit, load_latent_cache, prepare_latent_cache
from vqldm.diffusion.model import build_unet, check_latent_shape
from vqldm.autoencoder.model import latent_shape
from vqldm.diffusion.objective import make_sampling_scheduler

TINY_UNET = UNetConfig(block_out_channels=[16, 32], attention=[False, True], layers_per_block=1,
                       attention_head_dim=8, norm_num_groups=8, class_conditional=True)


def tiny_vqvae(seed: int = 0, scaling_factor: float = 2.5):
    torch.manual_seed(seed)
    cfg = AutoencoderModelConfig(block_out_channels=[8, 16], latent_channels=3, codebook_size=16, norm_num_groups=4,
                                 mid_block_add_attention=False)
    vq = build_vqmodel(cfg, 16, 1).eval().requires_grad_(False)
    vq.register_to_config(scaling_factor=scaling_factor)
    return vq


def tiny_datasets(seed: int = 0, n: int = 20) -> Datasets:
    g = torch.Generator().manual_seed(seed)
    make = lambda k: ArraySplit(torch.randint(0, 256, (k, 1, 16, 16), generator=g, dtype=torch.uint8),
                               torch.randint(0, 3, (k,), generator=g), ["a", "b", "c"])
    return Datasets(train=make(n), holdout=make(6), source="random")


def _prepare(root, vq, ds, **cache_kw):
    return prepare_latent_cache(root, vq, ds, CacheConfig(**{"encode_batch_size": 7, **cache_kw}), 16, 1, "pad", log=lambda m: None, progress=False)


def test_cache_round_trip(tmp_path):
    vq, ds = tiny_vqvae(), tiny_datasets()
    cache = _prepare(tmp_path, vq, ds)
    # 20 latents streamed in batches of 7 into one file per split, which safetensors itself reads back
    assert cache.built and sorted(p.name for p in cache.folder.glob("*.safetensors")) == ["holdout.safetensors", "train.safetensors"]
    from safetensors.torch import load_file

    on_disk = load_file(str(cache.folder / "train.safetensors"))
    assert torch.equal(on_disk["latents"], cache.train.latents) and torch.equal(on_disk["labels"], cache.train.labels)
    with torch.no_grad():
        x, y = ds.train.batch(torch.arange(len(ds.train)))
        expected = vq.encode(x).latents * 2.5
        xh, yh = ds.holdout.batch(torch.arange(len(ds.holdout)))
        expected_holdout = vq.encode(xh).latents * 2.5
    idx = torch.tensor([3, 0, 19, 7])
    got, labels = cache.train.batch(idx)
    torch.testing.assert_close(got, expected[idx], atol=1e-6, rtol=1e-5)
    assert torch.equal(labels, y[idx])
    torch.testing.assert_close(cache.holdout.latents, expected_holdout, atol=1e-6, rtol=1e-5)
    assert torch.equal(cache.holdout.labels, yh)
    assert cache.class_names == ["a", "b", "c"] and cache.scaling_factor == 2.5
    assert cache.latent_shape == latent_shape(vq.config, 16) == (3, 8, 8)
    index = json.loads((cache.folder / "index.json").read_text())
    assert index["key"] == cache.key and index["splits"]["train"]["count"] == 20
    # a second call reuses it (no rebuild), and a folder read back with the key matches
    again = _prepare(tmp_path, vq, ds)
    assert not again.built and again.folder == cache.folder
    torch.testing.assert_close(again.train.latents, cache.train.latents)
    with pytest.raises(UserError, match="built for another"):
        load_latent_cache(cache.folder, key="0" * 64)


def test_cache_invalidation(tmp_path):
    vq, ds = tiny_vqvae(), tiny_datasets()
    first = _prepare(tmp_path, vq, ds)
    # changed weights -> new key, rebuilt with the new encoder
    with torch.no_grad():
        vq.encoder.conv_in.weight.add_(0.05)
    changed = _prepare(tmp_path, vq, ds)
    assert changed.built and changed.key != first.key
    with torch.no_grad():
        x, _ = ds.train.batch(torch.arange(len(ds.train)))
        torch.testing.assert_close(changed.train.latents, vq.encode(x).latents * 2.5, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(changed.train.latents, first.train.latents)
    # changed scaling factor (config) -> rebuilt
    vq.register_to_config(scaling_factor=1.0)
    assert _prepare(tmp_path, vq, ds).built
    # changed data -> rebuilt
    other = tiny_datasets(seed=1)
    rebuilt = _prepare(tmp_path, vq, other)
    assert rebuilt.built and rebuilt.key not in (first.key, changed.key)
    # the mirrored view and a different geometry are part of the key too
    assert _prepare(tmp_path, vq, other, hflip=True).built


def test_cache_hflip_view(tmp_path):
    vq, ds = tiny_vqvae(), tiny_datasets(n=5)
    cache = _prepare(tmp_path, vq, ds, hflip=True)
    assert len(cache.train) == 10
    with torch.no_grad():
        x, y = ds.train.batch(torch.arange(5))
        mirrored = vq.encode(x.flip(-1)).latents * 2.5
    got, labels = cache.train.batch(torch.tensor([7, 2, 5]))
    torch.testing.assert_close(got[0], mirrored[2], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got[1], cache.train.latents[2])
    torch.testing.assert_close(got[2], mirrored[0], atol=1e-6, rtol=1e-5)
    assert labels.tolist() == [y[2].item(), y[2].item(), y[0].item()]
    plain = LatentSplit(cache.train.latents, cache.train.labels)
    assert len(plain) == 5


def test_build_unet_sized_from_vqvae():
    vq = tiny_vqvae()
    unet = build_unet(TINY_UNET, latent_shape(vq.config, 16), num_classes=3)
    assert (unet.config.in_channels, unet.config.out_channels, unet.config.sample_size) == (3, 3, 8)
    assert unet.config.num_class_embeds == 4  # 3 classes + the null class
    out = unet(torch.randn(2, 3, 8, 8), torch.tensor([1, 500]), class_labels=torch.tensor([0, 3])).sample
    assert out.shape == (2, 3, 8, 8)
    with pytest.raises(UserError, match="no class labels"):
        build_unet(TINY_UNET, (3, 8, 8), num_classes=0)


def test_latent_shape_mismatch_is_one_line_error():
    vq = tiny_vqvae()
    wrong_channels = build_unet(UNetConfig(**{**TINY_UNET.__dict__, "class_conditional": False}), (4, 8, 8))
    with pytest.raises(UserError) as err:
        check_latent_shape(vq.config, wrong_channels.config, 16)
    assert "latent shape mismatch" in str(err.value) and "\n" not in str(err.value)
    wrong_size = build_unet(UNetConfig(**{**TINY_UNET.__dict__, "class_conditional": False}), (3, 4, 4))
    with pytest.raises(UserError) as err:
        check_latent_shape(vq.config, wrong_size.config, 16)
    assert "4" in str(err.value) and "8x8" in str(err.value) and "\n" not in str(err.value)
    check_latent_shape(vq.config, dict(build_unet(TINY_UNET, (3, 8, 8), 3).config), 16)  # dicts work too
    # the exporter refuses such a pair too
    with pytest.raises(UserError, match="latent shape mismatch"):
        export_pipeline_folder(vq, wrong_channels, make_sampling_scheduler(ObjectiveConfig()), "/nonexistent/never")


def test_export_pipeline_folder_loads_in_diffusers(tmp_path):
    vq = tiny_vqvae()
    unet = build_unet(TINY_UNET, (3, 8, 8), num_classes=3)
    out = export_pipeline_folder(vq, unet, make_sampling_scheduler(ObjectiveConfig(prediction_type="v_prediction")),
                                 tmp_path / "pipe", extra={"class_names": ["a", "b", "c"], "step": 7})
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "LDMPipeline"
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["vqvae"] == ["diffusers", "VQModel"]
    info = read_vqldm_json(out)
    assert info == {"class_names": ["a", "b", "c"], "num_classes": 3, "null_class": 3, "image_size": 16, "channels": 1,
                    "autoencoder_scaling_factor": 2.5, "vqvae_weights_sha256": weights_sha256(vq), "step": 7}
    pipe = diffusers.DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe.scheduler, diffusers.DDIMScheduler)
    sc = pipe.scheduler.config
    assert (sc.prediction_type, sc.beta_schedule, sc.clip_sample, sc.set_alpha_to_one, sc.steps_offset) == (
        "v_prediction", "scaled_linear", False, False, 1)
    assert pipe.vqvae.config.scaling_factor == 2.5
    for a, b in zip(pipe.unet.parameters(), unet.parameters()):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob(".pipe.tmp-*"))  # no temporary folder left behind


def test_unconditional_export_runs_in_plain_ldm_pipeline(tmp_path):
    vq = tiny_vqvae()
    unet = build_unet(UNetConfig(**{**TINY_UNET.__dict__, "class_conditional": False}), (3, 8, 8))
    out = export_pipeline_folder(vq, unet, make_sampling_scheduler(ObjectiveConfig()), tmp_path / "pipe")
    assert read_vqldm_json(out)["null_class"] is None
    pipe = diffusers.LDMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 16, 16, 1)


def test_latent_channels_are_the_code_vectors_size_when_vq_embed_dim_is_set(tmp_path):
    """quant_conv maps the encoder's latent_channels to vq_embed_dim: the latents stage 2 learns have that
    many channels, and the cache, the geometry and the UNet agree on it."""
    torch.manual_seed(0)
    cfg = AutoencoderModelConfig(block_out_channels=[8, 16], latent_channels=3, vq_embed_dim=5, codebook_size=16,
                                 norm_num_groups=4, mid_block_add_attention=False)
    vq = build_vqmodel(cfg, 16, 1).eval().requires_grad_(False)
    vq.register_to_config(scaling_factor=1.0)
    assert latent_shape(vq.config, 16) == (5, 8, 8)
    cache = _prepare(tmp_path, vq, tiny_datasets(n=4))
    assert cache.latent_shape == (5, 8, 8)
    check_latent_shape(vq.config, dict(build_unet(TINY_UNET, (5, 8, 8), 3).config), 16)
