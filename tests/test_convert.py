"""``vqldm convert CKPT OUT --trust-pickle --config model.yaml``: a taming-transformers / CompVis VQ checkpoint
becomes a diffusers VQModel folder that encodes and decodes exactly as the original model."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from diffusers import VQModel

from vqldm.autoencoder.convert import taming_to_diffusers
from vqldm.cli.main import main

TAMING_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def to_taming(sd: dict, n: int) -> dict:
    """The inverse mapping, written out rule by rule: a diffusers VQModel state dict in taming's layout (taming
    numbers decoder levels highest resolution first; attention projections are 1x1 convs)."""
    out = {}
    for key, value in sd.items():
        k = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", key)
        k = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", k)
        k = k.replace("mid_block.attentions.0.", "mid.attn_1.")
        k = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
        k = re.sub(r"^encoder\.down_blocks\.(\d+)\.attentions\.", r"encoder.down.\1.attn.", k)
        k = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        parts = {"resnets": "block", "attentions": "attn", "upsamplers.0": "upsample"}
        k = re.sub(r"^decoder\.up_blocks\.(\d+)\.(resnets|attentions|upsamplers\.0)\.",
                   lambda m: f"decoder.up.{n - 1 - int(m[1])}.{parts[m[2]]}.", k)
        k = k.replace("conv_shortcut", "nin_shortcut")
        if ".attn" in k:
            for new, old in TAMING_ATTENTION.items():
                k = re.sub(rf"\.{re.escape(new)}\.(weight|bias)$", rf".{old}.\1", k)
            if k.endswith((".q.weight", ".k.weight", ".v.weight", ".proj_out.weight")):
                value = value[:, :, None, None]
        out[k] = value.clone()
    return out


def tiny_vqmodel(attention: bool) -> VQModel:
    torch.manual_seed(0)
    return VQModel(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D" if attention else "DownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D" if attention else "UpDecoderBlock2D", "UpDecoderBlock2D"),
        num_vq_embeddings=16, vq_embed_dim=3, norm_num_groups=32, sample_size=16, scaling_factor=1.0,
    ).eval()


def taming_yaml(path, attention: bool):
    ddconfig = {"double_z": False, "z_channels": 4, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8] if attention else [], "dropout": 0.0}
    path.write_text(yaml.safe_dump({"model": {"target": "taming.models.vqgan.VQModel",
                                              "params": {"embed_dim": 3, "n_embed": 16, "ddconfig": ddconfig,
                                                         "lossconfig": {"target": "taming.modules.losses.DummyLoss"}}}}))
    return path


@pytest.mark.parametrize("attention", [False, True])
def test_taming_checkpoint_converts_to_an_identical_vqmodel(tmp_path, capsys, attention):
    original = tiny_vqmodel(attention)
    sd = to_taming(original.state_dict(), 2)
    assert "encoder.mid.attn_1.q.weight" in sd and "decoder.up.1.block.0.conv1.weight" in sd
    sd["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)  # taming keeps its GAN in the checkpoint
    torch.save({"state_dict": sd, "global_step": 7}, tmp_path / "last.ckpt")
    out = tmp_path / "vqmodel"
    assert main(["convert", str(tmp_path / "last.ckpt"), str(out), "--trust-pickle",
                 "--config", str(taming_yaml(tmp_path / "model.yaml", attention))]) == 0
    assert "VQModel" in capsys.readouterr().out
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    converted = VQModel.from_pretrained(out, use_safetensors=True).eval()
    assert converted.config.scaling_factor == 1.0
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        h0, h1 = original.encode(x).latents, converted.encode(x).latents
        assert torch.equal(h0, h1)
        assert torch.allclose(original.decode(h0).sample, converted.decode(h1).sample, atol=1e-6)


def test_mapping_agrees_with_diffusers_own_conversion():
    """diffusers' single-file loader maps the same LDM autoencoder keys (it knows no codebook, nor attention
    inside levels): every key it writes is ours, with the same tensor."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    original = tiny_vqmodel(False)
    sd = to_taming(original.state_dict(), 2)
    theirs = convert_ldm_vae_checkpoint(sd, dict(original.config))
    ours = taming_to_diffusers(sd, 2)
    assert theirs and set(theirs) <= set(ours)
    for key, value in theirs.items():
        assert torch.equal(value, ours[key]), key
    assert set(ours) == set(original.state_dict())


def test_mismatched_config_is_one_line(tmp_path, capsys):
    sd = to_taming(tiny_vqmodel(False).state_dict(), 2)
    torch.save({"state_dict": sd}, tmp_path / "model.ckpt")
    cfg = taming_yaml(tmp_path / "model.yaml", attention=True)  # attention the checkpoint does not have
    code = main(["convert", str(tmp_path / "model.ckpt"), str(tmp_path / "out"), "--trust-pickle", "--config", str(cfg)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1
    assert re.search(r"\(missing \S+\.attentions\.0\.\S+, ", err[0]) and "more)); pass the YAML it was trained with" in err[0]
    assert not (tmp_path / "out").exists()


def test_config_without_ddconfig_is_one_line(tmp_path, capsys):
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "model.ckpt")
    (tmp_path / "bad.yaml").write_text("model:\n  params:\n    embed_dim: 3\n")
    code = main(["convert", str(tmp_path / "model.ckpt"), "--trust-pickle", "--config", str(tmp_path / "bad.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model.params.ddconfig" in err[0]
