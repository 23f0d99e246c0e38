"""A taming-transformers / CompVis latent-diffusion VQ checkpoint as a diffusers ``VQModel`` folder.

Both repos train the same encoder/decoder (taming's ``Encoder``/``Decoder``, ``VectorQuantizer``); their
checkpoints name it differently from diffusers:

* ``encoder.down.{i}.block.{j}`` / ``.attn.{j}`` / ``.downsample.conv`` -> ``encoder.down_blocks.{i}.resnets.{j}``
  / ``.attentions.{j}`` / ``.downsamplers.0.conv``; ``mid.block_1``, ``mid.attn_1``, ``mid.block_2`` ->
  ``mid_block.resnets.0``, ``mid_block.attentions.0``, ``mid_block.resnets.1``; ``norm_out`` -> ``conv_norm_out``;
  ResNet ``nin_shortcut`` -> ``conv_shortcut``.
* taming numbers the decoder's levels by resolution, highest first (``up.0`` runs last), diffusers in the
  order they run: ``decoder.up.{i}`` -> ``decoder.up_blocks.{n-1-i}``.
* attention ``norm``, ``q``, ``k``, ``v``, ``proj_out`` (1x1 convs) -> ``group_norm``, ``to_q``, ``to_k``,
  ``to_v``, ``to_out.0`` (linear layers: the 1x1 kernels squeezed).
* ``quantize.embedding``, ``quant_conv``, ``post_quant_conv``, ``conv_in``, ``conv_out`` keep their names; the
  discriminator and perceptual loss (``loss.*``) are dropped. A whole LDM checkpoint's ``first_stage_model.*``
  is its autoencoder.

The architecture comes from the run's YAML (``model.params.ddconfig`` + ``n_embed``, ``embed_dim``; or an
LDM config's ``model.params.first_stage_config.params``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import VQModel

from ..plumbing.checkpoint import AtomicDir, load_trusted_pickle
from ..plumbing.config import read_yaml
from ..plumbing.errors import UserError

LDM_FIRST_STAGE = "first_stage_model."
ATTENTION_NAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def taming_vqmodel_config(config: dict, source: str = "the config") -> dict:
    """diffusers ``VQModel`` arguments for a taming / latent-diffusion VQ model config (the parsed YAML)."""
    params = (config.get("model") or {}).get("params") or {}
    scaling_factor = float(params.get("scale_factor", 1.0))  # an LDM's; a VQ first stage alone is unscaled
    if "ddconfig" not in params and "first_stage_config" in params:
        params = params["first_stage_config"].get("params") or {}
    dd = params.get("ddconfig")
    if not isinstance(dd, dict):
        raise UserError(f"{source} has no model.params.ddconfig (nor model.params.first_stage_config.params.ddconfig); "
                        f"pass the taming/latent-diffusion YAML the checkpoint was trained with")
    missing = [k for k in ("ch", "ch_mult", "num_res_blocks", "z_channels", "in_channels", "out_ch", "resolution") if k not in dd]
    missing += [k for k in ("n_embed", "embed_dim") if k not in params]
    if missing:
        raise UserError(f"{source} lacks {', '.join(missing)} under model.params(.ddconfig); pass the VQ model's full YAML")
    unsupported = {"double_z": True, "tanh_out": True, "resamp_with_conv": False, "give_pre_end": True}
    bad = [f"{k}: {dd[k]}" for k, v in unsupported.items() if k in dd and bool(dd[k]) == v]
    if dd.get("attn_type", "vanilla") not in ("vanilla", "none"):
        bad.append(f"attn_type: {dd['attn_type']}")
    if int(dd.get("temb_ch", 0)):
        bad.append(f"temb_ch: {dd['temb_ch']}")
    if list(dd["ch_mult"])[:1] != [1]:
        bad.append(f"ch_mult: {list(dd['ch_mult'])} (diffusers' first level keeps conv_in's width)")
    if bad:
        raise UserError(f"{source}: {', '.join(bad)} has no diffusers VQModel equivalent; this checkpoint cannot be converted")
    n = len(dd["ch_mult"])
    res, attn = int(dd["resolution"]), {int(r) for r in dd.get("attn_resolutions") or []}
    with_attention = [res // 2**i in attn for i in range(n)]  # taming: attention at the levels of these resolutions
    return dict(
        in_channels=int(dd["in_channels"]),
        out_channels=int(dd["out_ch"]),
        down_block_types=tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in with_attention),
        up_block_types=tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(with_attention)),
        block_out_channels=tuple(int(dd["ch"]) * int(m) for m in dd["ch_mult"]),
        layers_per_block=int(dd["num_res_blocks"]),
        act_fn="silu",  # taming's nonlinearity, x * sigmoid(x)
        latent_channels=int(dd["z_channels"]),
        sample_size=res,
        num_vq_embeddings=int(params["n_embed"]),
        norm_num_groups=32,  # taming's Normalize
        vq_embed_dim=int(params["embed_dim"]),
        scaling_factor=scaling_factor,  # explicit: diffusers' missing-key default belongs to KL models
        mid_block_add_attention=dd.get("attn_type", "vanilla") != "none",
    )


def _attention(name: str) -> str:
    part, leaf = name.rsplit(".", 1)
    return f"{ATTENTION_NAMES.get(part, part)}.{leaf}"


def taming_to_diffusers_key(key: str, num_levels: int) -> str:
    """One taming / LDM autoencoder key as the diffusers ``VQModel`` key (unchanged if it is the same)."""
    m = re.fullmatch(r"(encoder|decoder)\.(down|up)\.(\d+)\.(block|attn|downsample|upsample)\.(.+)", key)
    if m:
        side, way, level, part, rest = m.groups()
        i = int(level) if way == "down" else num_levels - 1 - int(level)  # taming's up.0 is diffusers' last block
        blocks = f"{side}.{way}_blocks.{i}"
        if part == "block":
            j, name = rest.split(".", 1)
            return f"{blocks}.resnets.{j}.{name.replace('nin_shortcut', 'conv_shortcut')}"
        if part == "attn":
            j, name = rest.split(".", 1)
            return f"{blocks}.attentions.{j}.{_attention(name)}"
        return f"{blocks}.{part}rs.0.{rest}"  # downsample.conv -> downsamplers.0.conv
    m = re.fullmatch(r"(encoder|decoder)\.mid\.(block_1|block_2|attn_1)\.(.+)", key)
    if m:
        side, part, name = m.groups()
        if part == "attn_1":
            return f"{side}.mid_block.attentions.0.{_attention(name)}"
        return f"{side}.mid_block.resnets.{int(part[-1]) - 1}.{name.replace('nin_shortcut', 'conv_shortcut')}"
    return re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", key)


def taming_to_diffusers(state_dict: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    """A taming / LDM VQ state dict renamed for diffusers' ``VQModel`` (``loss.*`` dropped, a whole LDM's
    first stage taken, attention 1x1 conv kernels squeezed to linear weights)."""
    if any(k.startswith(LDM_FIRST_STAGE) for k in state_dict):
        state_dict = {k[len(LDM_FIRST_STAGE):]: v for k, v in state_dict.items() if k.startswith(LDM_FIRST_STAGE)}
    out = {}
    for key, value in state_dict.items():
        if key.startswith("loss."):
            continue
        new = taming_to_diffusers_key(key, num_levels)
        if ".attentions." in new and new.endswith(".weight") and value.ndim == 4:
            value = value[:, :, 0, 0]  # 1x1 conv -> linear
        out[new] = value
    return out


def _few(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def convert_taming_checkpoint(ckpt: str | Path, config_yaml: str | Path, out: str | Path) -> VQModel:
    """Write the VQ checkpoint ``ckpt`` (a trusted pickle) with the architecture of ``config_yaml`` as a
    diffusers ``VQModel`` folder ``out`` (config.json + safetensors); returns the model."""
    config = taming_vqmodel_config(read_yaml(config_yaml), repr(str(config_yaml)))
    mapped = taming_to_diffusers(load_trusted_pickle(ckpt), len(config["block_out_channels"]))
    model = VQModel(**config)
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(mapped), set(mapped) - set(expected)
    if missing or unexpected:
        what = "; ".join(part for part in (f"missing {_few(missing)}" if missing else "",
                                           f"unexpected {_few(unexpected)}" if unexpected else "") if part)
        raise UserError(f"{str(ckpt)!r} does not match the VQ model of {str(config_yaml)!r} ({what}); "
                        f"pass the YAML it was trained with")
    wrong = [f"{k} {tuple(mapped[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if mapped[k].shape != v.shape]
    if wrong:
        raise UserError(f"{str(ckpt)!r} does not match the VQ model of {str(config_yaml)!r} (checkpoint vs config shapes: "
                        f"{'; '.join(wrong[:2])}{f' (+{len(wrong) - 2} more)' if len(wrong) > 2 else ''}); pass the YAML it was trained with")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in mapped.items()})
    with AtomicDir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    return model
