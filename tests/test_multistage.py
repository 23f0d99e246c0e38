"""Residual and hierarchical quantizers (``quantizer.kind``: residual, hierarchical) and ``ResidualVQModel``.

* the recursion: stage d quantizes what the earlier stages left (on its own, coarser grid for the
  hierarchy), the decoder sees the sum, and every stage lowers the error;
* the training quantizer in eval mode = the exported model's ``decode(h)``; its global indices are the
  model's tokens offset by stage; tokens -> latents -> images round-trips;
* a pipeline folder over a ResidualVQModel loads in plain ``diffusers.DiffusionPipeline.from_pretrained``
  (vqldm installed) and samples what vqldm samples;
* config errors are one line naming the key.
(The CLI runs -- train, resume bit-exactly, export, stage 2, evaluate -- are in test_quantizer_kinds.py.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vqldm.autoencoder.model import (
    AutoencoderModelConfig,
    ResidualVQModel,
    VQAutoencoder,
    build_vqmodel,
    code_grid,
    code_mask,
    code_vocabulary,
    decode_codes,
    encode_indices,
    global_codes,
    nearest_codes,
)
from vqldm.autoencoder.multistage import stage_factors
from vqldm.autoencoder.quantizer import QuantizerConfig
from vqldm.plumbing.errors import UserError

TINY = AutoencoderModelConfig(block_out_channels=[8, 16], latent_channels=3, codebook_size=32, norm_num_groups=4,
                              mid_block_add_attention=False)


def trained(kind: str, stages: int = 2, steps: int = 3, seed: int = 0):
    """A tiny autoencoder of ``kind`` after a few training steps, its codebooks synced, in eval mode."""
    torch.manual_seed(seed)
    q = QuantizerConfig(kind=kind, stages=stages)
    vq = build_vqmodel(TINY, 16, 1, q)
    model = VQAutoencoder(vq, q, seed=seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    model.train()
    for _ in range(steps):
        rec, out, _ = model(x)
        ((rec - x).abs().mean() + out.loss).backward()
        opt.step()
        opt.zero_grad()
    model.quantizer.sync_codebook()
    return model.eval(), vq.eval(), x


def test_stage_factors():
    assert stage_factors("residual", 3) == [1, 1, 1]
    assert stage_factors("hierarchical", 3) == [4, 2, 1]


@pytest.mark.parametrize("kind", ["residual", "hierarchical"])
def test_the_recursion_and_every_stage_lowers_the_error(kind):
    model, vq, x = trained(kind)
    with torch.no_grad():
        h = vq.encode(x).latents
        z, indices = vq.quantize_stages(h)
        b, _, hh, ww = h.shape
        assert [tuple(i.shape[1:]) for i in indices] == vq.code_grids(hh, ww)
        # by hand: stage 1 on its grid (2x2 means for the hierarchy), stage 2 on what stage 1 left
        s = vq.factors[0]
        x1 = torch.nn.functional.avg_pool2d(h, s) if s > 1 else h
        flat = x1.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
        k1 = torch.cdist(flat, vq.quantize.embedding.weight).argmin(1).view(b, hh // s, ww // s)
        assert torch.equal(k1, indices[0])
        e1 = vq.quantize.embedding.weight[k1].permute(0, 3, 1, 2)
        up1 = e1.repeat_interleave(s, 2).repeat_interleave(s, 3)
        r1 = h - up1
        k2 = torch.cdist(r1.permute(0, 2, 3, 1).reshape(-1, h.shape[1]), vq.stage_codebooks[0].weight).argmin(1).view(b, hh, ww)
        assert torch.equal(k2, indices[1])
        torch.testing.assert_close(z, up1 + vq.stage_codebooks[0].weight[k2].permute(0, 3, 1, 2), rtol=0, atol=1e-6)
        assert (h - z).pow(2).mean() < (h - up1).pow(2).mean()  # the second stage codes what the first left


@pytest.mark.parametrize("kind", ["residual", "hierarchical"])
def test_training_quantizer_decodes_as_the_exported_model(kind, tmp_path):
    model, vq, x = trained(kind)
    vq.save_pretrained(tmp_path / "vqvae", safe_serialization=True)
    loaded = ResidualVQModel.from_pretrained(tmp_path / "vqvae", use_safetensors=True).eval()
    assert json.loads((tmp_path / "vqvae" / "config.json").read_text())["stage_factors"] == vq.factors
    with torch.no_grad():
        rec, out, h = model(x)
        tokens = nearest_codes(loaded, h)
        assert tokens.shape == (x.shape[0], code_grid(loaded, (3, 8, 8))[1])
        assert torch.equal(global_codes(loaded, tokens), out.indices)
        assert int(out.indices.max()) < code_vocabulary(loaded) == 2 * 32
        torch.testing.assert_close(loaded.decode(h).sample, rec, rtol=0, atol=1e-5)
        torch.testing.assert_close(loaded(x).sample, rec, rtol=0, atol=1e-5)
        z_q, same = encode_indices(loaded, h)
        assert torch.equal(same, tokens)
        torch.testing.assert_close(decode_codes(loaded, tokens, (1, tokens.shape[1])), rec.clamp(-1, 1), rtol=0, atol=1e-5)
        torch.testing.assert_close(loaded.codes_to_latents(tokens, 8, 8), z_q, rtol=0, atol=1e-6)


def test_code_mask_repaints_every_stage_under_the_mask():
    _, vq, _ = trained("hierarchical", steps=1)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :8] = 1  # the top-left quarter of the image
    grid = code_grid(vq, (3, 8, 8))
    m = code_mask(vq, mask, grid).view(-1)
    top, bottom = m[:16].view(4, 4), m[16:].view(8, 8)
    assert grid == (1, 16 + 64)
    assert top[:2, :2].all() and top.sum() == 4
    assert bottom[:4, :4].all() and bottom.sum() == 16


def test_pipeline_folder_loads_in_plain_diffusers_and_samples_the_same(tmp_path):
    from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel

    from vqldm import VQLatentDiffusionPipeline

    _, vq, _ = trained("residual", steps=1)
    vq.register_to_config(scaling_factor=1.0)
    torch.manual_seed(1)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), norm_num_groups=4,
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    ours = VQLatentDiffusionPipeline(vqvae=vq, unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100))
    ours.set_progress_bar_config(disable=True)
    ours.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["vqvae"] == ["vqldm", "ResidualVQModel"] and index["_class_name"] == "LDMPipeline"
    plain = DiffusionPipeline.from_pretrained(tmp_path / "pipe", use_safetensors=True)
    assert type(plain).__name__ == "LDMPipeline" and isinstance(plain.vqvae, ResidualVQModel)
    plain.set_progress_bar_config(disable=True)
    kw = dict(batch_size=2, num_inference_steps=3, output_type="np")
    expected = plain(generator=torch.Generator().manual_seed(3), **kw).images
    got = VQLatentDiffusionPipeline.from_pretrained(tmp_path / "pipe")(generator=torch.Generator().manual_seed(3), **kw).images
    assert np.allclose(expected, got, atol=1e-6)
    # a changed codebook in the folder is refused by vqldm (the hash check covers every stage's table)
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "pipe" / "vqvae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["stage_codebooks.0.weight"] = tensors["stage_codebooks.0.weight"] + 1
    save_file(tensors, weights)
    with pytest.raises(ValueError, match="sha256"):  # ModelFolderError
        VQLatentDiffusionPipeline.from_pretrained(tmp_path / "pipe")


def test_config_errors_are_one_line_and_name_the_key():
    with pytest.raises(ValueError, match="quantizer.stages"):
        QuantizerConfig(kind="residual", stages=1)
    with pytest.raises(ValueError, match="lookup=cosine"):
        QuantizerConfig(kind="residual", lookup="cosine")
    with pytest.raises(ValueError, match="grow_from"):
        QuantizerConfig(kind="hierarchical", grow_from=4)
    with pytest.raises(UserError, match="quantizer.stages") as err:  # 16 px / f2: an 8x8 grid; 5 levels need it divisible by 16
        build_vqmodel(TINY, 16, 1, QuantizerConfig(kind="hierarchical", stages=5))
    assert "\n" not in str(err.value)
