"""The stage-1 model: a plain ``diffusers.VQModel`` built from a typed config, the training wrapper, the one
loader every stage uses to open a trained autoencoder (:func:`load_vqvae`), and its latent geometry.

* The autoencoder downsamples by ``f = 2^(len(block_out_channels) - 1)`` (each encoder block but the last
  halves the size), so ``image_size`` pixels give an ``image_size / f`` grid of ``vq_embed_dim`` (else
  ``latent_channels``) channels (:func:`latent_shape`).
* Stage 2 works on ``h * scaling_factor`` (LDM convention: unit variance); :func:`scale_latents` and
  :func:`unscale_latents` are the only places that multiply or divide by it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import VQModel
from torch import nn

from ..plumbing.checkpoint import refuse_pickle
from ..plumbing.config import config_value, read_yaml
from ..plumbing.errors import UserError
from ..plumbing.init_weights import init_folder, load_init_model, read_model_config
from ..plumbing.images import size_hw
from .fsq import FSQ
from .multistage import MULTISTAGE_KINDS, MultiStageQuantizer, ResidualVQModel, stage_factors
from .quantizer import QuantizerConfig, QuantizerOutput, VectorQuantizerEMA, nearest_rows
from .simvq import SimVQ

logger = logging.getLogger(__name__)


@dataclass
class AutoencoderModelConfig:
    """Architecture of the VQ autoencoder; image size and channels come from the data section."""

    block_out_channels: list[int] = field(default_factory=lambda: [64, 128, 128])  # f = 2^(len-1)
    layers_per_block: int = 1
    latent_channels: int = 4
    vq_embed_dim: int | None = None  # codebook vector size; defaults to latent_channels
    codebook_size: int = 256
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True

    def __post_init__(self):
        if not self.block_out_channels:
            raise ValueError("model.block_out_channels must list at least one width")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"model.block_out_channels {bad} must be divisible by model.norm_num_groups={self.norm_num_groups}")
        if self.codebook_size < 2:
            raise ValueError(f"model.codebook_size must be >= 2, got {self.codebook_size}")

    @property
    def downsampling_factor(self) -> int:
        return downsampling_factor(len(self.block_out_channels))


def build_vqmodel(cfg: AutoencoderModelConfig, image_size: int, channels: int,
                  quantizer: QuantizerConfig | None = None) -> VQModel:
    """The untrained VQModel; a :class:`ResidualVQModel` when ``quantizer.kind`` is residual or hierarchical."""
    f = cfg.downsampling_factor
    if image_size % f:
        raise UserError(
            f"image size {image_size} is not divisible by the downsampling factor {f} "
            f"({len(cfg.block_out_channels)} blocks); set data.image_size to a multiple of {f}"
        )
    n = len(cfg.block_out_channels)
    extra = {}
    if quantizer is not None and quantizer.kind in MULTISTAGE_KINDS:
        factors = stage_factors(quantizer.kind, quantizer.stages)
        grid = image_size // f
        if grid % factors[0]:
            raise UserError(f"quantizer.kind=hierarchical with {quantizer.stages} stages needs a latent grid divisible by "
                            f"{factors[0]}, but {image_size} px / f{f} is {grid}; lower quantizer.stages or change data.image_size")
        extra["stage_factors"] = tuple(factors)
    return (ResidualVQModel if extra else VQModel)(
        **extra,
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        sample_size=image_size,
        num_vq_embeddings=cfg.codebook_size,
        norm_num_groups=cfg.norm_num_groups,
        vq_embed_dim=cfg.vq_embed_dim,
        scaling_factor=1.0,  # measured after training and written explicitly (never the KL default 0.18215)
        mid_block_add_attention=cfg.mid_block_add_attention,
    )


def init_vqmodel(init: str, cfg, what: str = "--init") -> tuple[VQModel, str]:
    """The published VQModel named by ``init`` (a VQModel, pipeline or run folder, or a Hub repo id; see
    ``plumbing.init_weights``) with its weights, to fine-tune on ``cfg``'s data, and the line that says so.

    The architecture is the init's: ``cfg.model`` is rewritten from its config (so config.yaml tells what
    was trained). Its channels must be the data's; its ``sample_size`` may differ (encoder and decoder are
    convolutional) and becomes ``data.image_size``. An FSQ quantizer cannot keep a learned codebook."""
    if cfg.quantizer.kind == "fsq":
        raise UserError(f"{what} starts from a learned codebook, which quantizer.kind=fsq (a fixed grid) cannot keep; "
                        f"use quantizer.kind=vq or simvq")
    if cfg.quantizer.kind in MULTISTAGE_KINDS:
        raise UserError(f"{what} starts from a published VQModel's one codebook, which quantizer.kind={cfg.quantizer.kind} "
                        f"(several codebooks) cannot keep; use quantizer.kind=vq or simvq, or train without {what}")
    if cfg.quantizer.grow_from is not None:
        raise UserError(f"{what} starts from a published codebook of all its codes, which quantizer.grow_from (a codebook "
                        f"grown from a few fresh codes) would discard; remove quantizer.grow_from")
    folder = init_folder(init, "vqvae", what)
    config = read_model_config(folder, ("VQModel",), what)
    channels, image_size = cfg.data.channels, cfg.data.image_size
    if (config.get("in_channels"), config.get("out_channels")) != (channels, channels):
        raise UserError(f"{what} {str(folder)!r} is an autoencoder of {config.get('in_channels')}-channel images but the "
                        f"data has {channels} channel{'s' if channels != 1 else ''} (data.channels); pass an autoencoder of {channels}-channel images")
    f = downsampling_factor(config)
    if image_size % f:
        raise UserError(f"data.image_size {image_size} is not divisible by {what}'s downsampling factor {f}; use a multiple of {f}")
    vqmodel = load_init_model(VQModel, folder, what)
    published = size_hw(vqmodel.config.sample_size)[0]
    vqmodel.register_to_config(sample_size=image_size)
    c = vqmodel.config
    cfg.model = AutoencoderModelConfig(
        block_out_channels=list(c.block_out_channels), layers_per_block=c.layers_per_block, latent_channels=c.latent_channels,
        vq_embed_dim=c.vq_embed_dim, codebook_size=c.num_vq_embeddings, norm_num_groups=c.norm_num_groups,
        mid_block_add_attention=c.mid_block_add_attention)
    d = c.vq_embed_dim or c.latent_channels
    line = (f"init: VQModel {str(folder)!r} (f{f}, {d}x{image_size // f}x{image_size // f} latents, {c.num_vq_embeddings} codes; "
            f"published at {published} px, trained at {image_size} px): the model is the init's, the preset's model.* "
            f"keys and quantizer.init are ignored; the scaling factor is measured again on these images")
    return vqmodel, line


def vq_decode(vqmodel: VQModel, z_q: torch.Tensor) -> torch.Tensor:
    """Decode already-quantized latents exactly as ``VQModel.decode(..., force_not_quantize=True)``."""
    quant2 = vqmodel.post_quant_conv(z_q)
    return vqmodel.decoder(quant2, z_q if vqmodel.config.norm_type == "spatial" else None)


# quantizer.kind -> its module
QUANTIZERS = {"vq": VectorQuantizerEMA, "simvq": SimVQ, "fsq": FSQ, "residual": MultiStageQuantizer,
              "hierarchical": MultiStageQuantizer}
VQ_MODEL_CLASSES = {"VQModel": VQModel, "ResidualVQModel": ResidualVQModel}  # config.json _class_name -> class


class VQAutoencoder(nn.Module):
    """Training wrapper: VQModel encoder/decoder + the quantizer of ``quantizer.kind`` sharing its codebook
    (every kind writes the codes it decodes into ``vqmodel.quantize.embedding``; call
    ``quantizer.sync_codebook()`` after the last optimizer step before using ``vqmodel`` alone).

    ``forward(x)`` returns (reconstruction, QuantizerOutput, pre-quantization latents h); one module, so
    DDP sees one forward per step.
    """

    def __init__(self, vqmodel: VQModel, qcfg: QuantizerConfig, seed: int = 0, keep_codebook: bool = False):
        """``keep_codebook``: the quantizer starts from the codebook ``vqmodel`` holds (published weights)."""
        super().__init__()
        self.vqmodel = vqmodel
        if (qcfg.kind in MULTISTAGE_KINDS) != is_multistage(vqmodel):
            raise ValueError(f"quantizer.kind={qcfg.kind} needs {'a ResidualVQModel' if qcfg.kind in MULTISTAGE_KINDS else 'a plain VQModel'}; "
                             f"build it with build_vqmodel(..., quantizer=cfg.quantizer)")
        tables = vqmodel if qcfg.kind in MULTISTAGE_KINDS else vqmodel.quantize.embedding  # what the kind trains
        self.quantizer = QUANTIZERS[qcfg.kind](tables, qcfg, seed=seed, keep_codebook=keep_codebook)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vqmodel.quant_conv(self.vqmodel.encoder(x))  # B x D x h x w

    def forward(self, x: torch.Tensor, step: int | None = None) -> tuple[torch.Tensor, QuantizerOutput, torch.Tensor]:
        """x -> (reconstruction, quantizer output, h); ``step``: the optimizer step (see the quantizer)."""
        h = self.encode(x)
        q = self.quantizer(h, step=step)
        rec = vq_decode(self.vqmodel, q.z_q.to(h.dtype))
        return rec, q, h

    def last_layer(self) -> torch.Tensor:
        return self.vqmodel.decoder.conv_out.weight


def is_multistage(vqmodel) -> bool:
    """Whether ``vqmodel`` quantizes with several codebooks (residual / hierarchical: :class:`ResidualVQModel`)."""
    return isinstance(vqmodel, ResidualVQModel)


@torch.inference_mode()
def nearest_codes(vqmodel: VQModel, h: torch.Tensor) -> torch.Tensor:
    """Pre-quantization latents B x D x h x w -> the VQModel's nearest-code indices B x h x w: diffusers'
    ``argmin(cdist(z, E))``, searched in blocks (:func:`~vqldm.autoencoder.quantizer.nearest_rows`: K up to
    2^16 fits). A :class:`ResidualVQModel`: its tokens, B x L (every stage's grid, stage after stage)."""
    if is_multistage(vqmodel):
        return vqmodel.encode_codes(h)[1]
    codebook = vqmodel.quantize.embedding.weight
    idx = nearest_rows(h.permute(0, 2, 3, 1).reshape(-1, codebook.shape[1]), codebook)
    return idx.view(h.shape[0], h.shape[2], h.shape[3])


def code_grid(vqmodel, latent: tuple[int, int, int]) -> tuple[int, int]:
    """The grid a prior models for ``latent`` (C, h, w): (h, w), or (1, L) for a :class:`ResidualVQModel`'s
    L tokens (all its stages' grids in one sequence)."""
    _, h, w = latent
    if is_multistage(vqmodel):
        return 1, sum(gh * gw for gh, gw in vqmodel.code_grids(h, w))
    return h, w


def code_vocabulary(vqmodel) -> int:
    """The codes usage is counted over: K, or K per stage of a :class:`ResidualVQModel`."""
    k = int(vqmodel.config.num_vq_embeddings)
    return k * len(vqmodel.factors) if is_multistage(vqmodel) else k


def global_codes(vqmodel, tokens: torch.Tensor) -> torch.Tensor:
    """Codes of :func:`nearest_codes` as indices into :func:`code_vocabulary` (stage d's code k is d K + k)."""
    if not is_multistage(vqmodel):
        return tokens
    _, h, w = latent_shape(vqmodel.config)
    stage = torch.cat([torch.full((gh * gw,), d) for d, (gh, gw) in enumerate(vqmodel.code_grids(h, w))])
    k = int(vqmodel.config.num_vq_embeddings)
    return tokens.reshape(tokens.shape[0], -1) + (stage * k).to(tokens.device)


def code_mask(vqmodel, mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A B x 1 x H x W image mask (1 = repaint) -> the codes to repaint on the prior's ``grid``: a code is
    repainted when any pixel it covers is (every stage's grid of a :class:`ResidualVQModel`, in token order)."""
    if not is_multistage(vqmodel):
        return F.adaptive_max_pool2d(mask, grid)
    _, h, w = latent_shape(vqmodel.config)
    parts = [F.adaptive_max_pool2d(mask, g).flatten(2) for g in vqmodel.code_grids(h, w)]
    return torch.cat(parts, dim=2).view(mask.shape[0], 1, *grid)


@torch.inference_mode()
def encode_indices(vqmodel: VQModel, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-quantization latents -> (quantized latents, code indices B x h x w), by the VQModel's own lookup
    (:func:`nearest_codes`), the quantized latents in the straight-through form ``h + (e - h)`` that
    ``VQModel.quantize`` returns."""
    if is_multistage(vqmodel):
        return vqmodel.encode_codes(h)
    indices = nearest_codes(vqmodel, h)
    e = vqmodel.quantize.embedding(indices).permute(0, 3, 1, 2)  # B x D x h x w
    return h + (e - h), indices


@torch.inference_mode()
def decode_codes(vqmodel: VQModel, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Code indices B x (h*w) (raster order) -> images in [-1, 1]: look the codes up in the VQModel's
    codebook and decode them, exactly as ``VQModel.decode`` does for already-quantized latents."""
    b = codes.shape[0]
    if is_multistage(vqmodel):  # its tokens, whatever the prior's grid: (1, L)
        _, lh, lw = latent_shape(vqmodel.config)
        z_q = vqmodel.codes_to_latents(codes.reshape(b, -1), lh, lw)
        return vqmodel.decode(z_q, force_not_quantize=True).sample.clamp(-1, 1)
    h, w = grid
    dim = vqmodel.quantize.embedding.weight.shape[1]
    z_q = vqmodel.quantize.get_codebook_entry(codes.reshape(-1), (b, h, w, dim))  # B x D x h x w
    return vqmodel.decode(z_q, force_not_quantize=True).sample.clamp(-1, 1)


# ----------------------------------------------------------------------------- loading a trained autoencoder
def apply_missing_scale_rule(vqvae: VQModel) -> bool:
    """A VQ config without ``scaling_factor`` means 1.0 (CompVis LDM never scaled VQ latents); diffusers
    would use the KL autoencoder's 0.18215 instead (diffusers issue #6725). Writes 1.0 into the config and
    returns True when the key was missing."""
    if "scaling_factor" not in vqvae.config.get("_use_default_values", []):
        return False
    logger.warning("vqvae config has no scaling_factor; using 1.0 for this VQ model (diffusers' default %s belongs to KL autoencoders)",
                   vqvae.config.scaling_factor)
    vqvae.register_to_config(scaling_factor=1.0)
    vqvae.register_to_config(_use_default_values=[k for k in vqvae.config.get("_use_default_values", []) if k != "scaling_factor"])
    return True


@dataclass
class LoadedAutoencoder:
    """A frozen VQModel and where it came from."""

    vqvae: VQModel
    folder: Path  # the VQModel folder (config.json + safetensors)
    run_dir: Path | None  # the `vqldm train-autoencoder` run folder, when it is one
    data: dict | None  # that run's ``data`` config section (image size, channels, fit, source)


def find_vqvae_folder(path: str | os.PathLike, what: str = "--autoencoder") -> tuple[Path, Path | None]:
    """(VQModel folder, run folder or None) for an autoencoder run folder (holding ``vqvae/``), a pipeline
    folder (holding ``vqvae/``) or a VQModel folder; a UserError naming the fix otherwise."""
    p = Path(path).expanduser()
    refuse_pickle(p)  # a .ckpt/.bin/.pt handed as the model: name the conversion, never unpickle
    if not p.is_dir():
        raise UserError(f"{what} {str(path)!r} not found; pass an autoencoder run folder (holding vqvae/) or a VQModel folder")
    if (p / "vqvae" / "config.json").is_file():
        return p / "vqvae", (p if (p / "config.yaml").is_file() else None)
    if (p / "config.json").is_file():
        return p, (p.parent if (p.parent / "config.yaml").is_file() else None)
    raise UserError(f"{what} {str(path)!r} holds no vqvae/ folder or config.json; pass the --out folder of `vqldm train-autoencoder`")


def vq_model_class(folder: str | os.PathLike, config: dict | None = None):
    """The class of the VQ model saved in ``folder`` (VQModel or ResidualVQModel, by its config.json's
    ``_class_name``; VQModel when unreadable, so its loader says what is wrong), or None for another class."""
    if config is None:
        try:
            config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return VQModel
    return VQ_MODEL_CLASSES.get(config.get("_class_name"))


def load_vqvae(path: str | os.PathLike, what: str = "--autoencoder") -> LoadedAutoencoder:
    """The one autoencoder loader: safetensors only, a VQModel only, the missing-scale = 1.0 rule applied,
    eval mode, no gradients."""
    folder, run_dir = find_vqvae_folder(path, what)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{str(folder / 'config.json')!r} is not readable JSON; re-export the autoencoder") from None
    model_class = vq_model_class(folder, config)
    if model_class is None:
        raise UserError(f"{str(folder)!r} holds a {config.get('_class_name')!r}, not a VQModel; pass a VQ autoencoder folder")
    if not any(folder.glob("*.safetensors")):
        raise UserError(f"{str(folder)!r} has no safetensors weights; convert them with `vqldm convert FILE --trust-pickle` first")
    try:
        vqvae = model_class.from_pretrained(folder, use_safetensors=True)
    except Exception as err:  # diffusers raises several types for bad folders
        raise UserError(f"could not load the VQModel in {str(folder)!r} ({str(err).splitlines()[0][:160]}); re-export the autoencoder") from None
    apply_missing_scale_rule(vqvae)
    vqvae.eval().requires_grad_(False)
    data = None
    if run_dir is not None:
        data = read_yaml(run_dir / "config.yaml").get("data") or None
    return LoadedAutoencoder(vqvae, folder, run_dir, data)


def downsampling_factor(num_blocks_or_config) -> int:
    """f of an autoencoder (its config, or its number of encoder blocks): each block but the last halves the size."""
    if isinstance(num_blocks_or_config, int):
        n = num_blocks_or_config
    else:
        n = len(config_value(num_blocks_or_config, "block_out_channels"))
    return 2 ** (n - 1)


def latent_shape(vqvae_config, image_size=None) -> tuple[int, int, int]:
    """(channels, h, w) of the pre-quantization latents for images of ``image_size`` (int or (h, w);
    default: the autoencoder's own ``sample_size``). A size not divisible by f is a UserError. The channels
    are the codebook vectors' size: ``quant_conv`` maps the encoder's ``latent_channels`` to
    ``vq_embed_dim`` when that is set."""
    f = downsampling_factor(vqvae_config)
    h, w = size_hw(config_value(vqvae_config, "sample_size") if image_size is None else image_size)
    if h % f or w % f:
        raise UserError(f"image size {h}x{w} is not divisible by the autoencoder's downsampling factor {f}; use a multiple of {f}")
    return int(config_value(vqvae_config, "vq_embed_dim") or config_value(vqvae_config, "latent_channels")), h // f, w // f


def scale_latents(h: torch.Tensor, vqvae) -> torch.Tensor:
    """Pre-quantization latents -> the denoiser's space: ``h * scaling_factor``."""
    return h * float(vqvae.config.scaling_factor)


def unscale_latents(z: torch.Tensor, vqvae) -> torch.Tensor:
    """The denoiser's space -> pre-quantization latents: ``z / scaling_factor``."""
    return z / float(vqvae.config.scaling_factor)


@dataclass
class AutoencoderGeometry:
    """What a stage trained on an autoencoder's latents needs to size itself, read from config files only."""

    image_size: int
    channels: int
    latent: tuple[int, int, int]  # (C, H, W) of the pre-quantization latents
    codebook_size: int
    source: str | None  # the data the autoencoder was trained on (its run's config.yaml)

    def describe(self) -> str:
        c, h, w = self.latent
        return f"autoencoder {self.channels}x{self.image_size}x{self.image_size} -> {c}x{h}x{w} latents"


def autoencoder_geometry(path) -> AutoencoderGeometry:
    """Image size, channels, latent shape and codebook of the autoencoder at ``path`` (a run folder or a
    VQModel folder), from its ``config.json`` and its run's ``config.yaml``: no weights are loaded."""
    folder, run_dir = find_vqvae_folder(path)
    try:
        vq = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{str(folder / 'config.json')!r} is not readable JSON; re-export the autoencoder") from None
    data = (read_yaml(run_dir / "config.yaml").get("data") or {}) if run_dir is not None else {}
    image_size = int(data.get("image_size") or size_hw(vq.get("sample_size", 32))[0])
    channels = int(data.get("channels") or vq.get("in_channels", 3))
    return AutoencoderGeometry(image_size, channels, latent_shape(vq, image_size), int(vq.get("num_vq_embeddings", 0)),
                               data.get("source"))
