"""Text encoders: a tokenizer and a ``transformers`` model that turn prompts into the hidden states a
``UNet2DConditionModel`` cross-attends to (``encoder_hidden_states``, B x max_length x hidden_size).

Two kinds (``text.encoder``):

* ``scratch``: a T5 encoder (Raffel et al. 2020) over ByT5's byte vocabulary (Xue et al. 2022): 256 byte
  values plus pad / end / unknown marks, no vocabulary file, nothing to download; trained with the UNet.
* a Hub name or local folder of a pretrained CLIP text encoder (Radford et al. 2021) or a T5 encoder,
  frozen. ``CLIPModel`` checkpoints load their text half; weights are read from safetensors only.

Prompts are padded to ``max_length`` and fed without an attention mask, exactly as diffusers'
``LDMTextToImagePipeline`` does, so an exported model samples the same there; the null condition of
classifier-free guidance is the empty prompt's states (Ho & Salimans 2022; Stable Diffusion).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..plumbing.errors import UserError
from .config import SCRATCH, TextConfig

NULL_PROMPT = ""
T5_TYPES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
CLIP_TYPES = {"clip": "CLIPTextModel", "clip_text_model": "CLIPTextModel"}


def require_transformers():
    """The ``transformers`` module, or a one-line UserError saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise UserError("text-conditional models need the transformers package; install it with: pip install 'vqldm[text]'") from None
    return transformers


@dataclass
class TextEncoder:
    """A tokenizer + encoder pair and how prompts are fed to it."""

    tokenizer: object
    model: torch.nn.Module  # transformers PreTrainedModel: input_ids -> (last_hidden_state, ...)
    source: str  # "scratch", a Hub name or a folder
    max_length: int

    @property
    def trained(self) -> bool:
        return self.source == SCRATCH

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "d_model", None) or cfg.hidden_size)

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """B prompts -> B x max_length int64 token ids (padded, truncated; no attention mask)."""
        return self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                              return_tensors="pt").input_ids

    def too_long(self, prompts: Sequence[str]) -> int:
        """How many prompts lose tokens to ``max_length`` truncation."""
        lengths = self.tokenizer(list(prompts), truncation=False).input_ids
        return sum(len(ids) > self.max_length for ids in lengths)

    def null_ids(self, batch_size: int = 1) -> torch.Tensor:
        return self.tokenize([NULL_PROMPT]).expand(batch_size, -1)


def encode(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Token ids B x L -> the encoder's last hidden states B x L x D (what the UNet attends to)."""
    return model(input_ids)[0]


def scratch_encoder(cfg: TextConfig) -> TextEncoder:
    """A randomly initialised byte-level T5 encoder (seed it before calling) with ByT5's tokenizer."""
    transformers = require_transformers()
    tokenizer = transformers.ByT5Tokenizer()
    config = transformers.T5Config(
        vocab_size=len(tokenizer), d_model=cfg.width, d_kv=cfg.width // cfg.heads, d_ff=4 * cfg.width,
        num_layers=cfg.layers, num_heads=cfg.heads, dropout_rate=cfg.dropout, feed_forward_proj="gated-gelu",
        is_encoder_decoder=False, use_cache=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    return TextEncoder(tokenizer, transformers.T5EncoderModel(config), SCRATCH, cfg.max_length)


def encoder_class_name(model_type: str) -> str | None:
    return T5_TYPES.get(model_type) or CLIP_TYPES.get(model_type)


def pretrained_encoder(name: str, max_length: int) -> TextEncoder:
    """A frozen CLIP text or T5 encoder by Hub name or local folder; one-line UserErrors for a name that
    cannot be found, a model of another kind, or a ``max_length`` beyond its positions."""
    transformers = require_transformers()
    local = Path(name).exists()
    where = "folder" if local else "Hub model"
    if not local:
        name = _hub_snapshot(name)
    try:
        config = transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise UserError(f"text encoder {where} {name!r} has no usable config.json ({type(err).__name__}); pass a folder "
                        f"saved by transformers' save_pretrained, a Hub name, or text.encoder=scratch") from None
    model_type = getattr(config, "model_type", "")
    class_name = encoder_class_name(model_type)
    if class_name is None:
        raise UserError(f"text encoder {name!r} is a {model_type or 'unknown'} model; vqldm takes CLIP text encoders and "
                        f"T5 encoders (or text.encoder=scratch)")
    text_config = getattr(config, "text_config", config)  # a full CLIPModel keeps its text half here
    positions = getattr(text_config, "max_position_embeddings", None)
    if positions is not None and max_length > positions:
        raise UserError(f"text.max_length {max_length} is more than the {positions} positions of {name!r}; "
                        f"use --set text.max_length={positions} or less")
    try:
        with quiet_transformers():
            tokenizer = transformers.AutoTokenizer.from_pretrained(name)
            model = getattr(transformers, class_name).from_pretrained(name, use_safetensors=True)
    except (OSError, ValueError, EnvironmentError) as err:
        raise UserError(f"could not load the text encoder {where} {name!r} ({type(err).__name__}: {str(err).splitlines()[0][:160]}); "
                        f"it needs a tokenizer and safetensors weights") from None
    return TextEncoder(tokenizer, model.eval().requires_grad_(False), name, max_length)


HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "spiece*"]  # config, weights, tokenizer files; no pickles


def _hub_snapshot(name: str) -> str:
    """A local folder holding the Hub model ``name``'s config, safetensors weights and tokenizer: the Hugging
    Face cache when it has them, else a download (one quick look-up first, so an offline machine or a name
    that does not exist fails in a second with one line, not after a minute of retries)."""
    from huggingface_hub import HfApi, snapshot_download

    unknown = (f"unknown text encoder {name!r}: not a local folder, and the Hugging Face Hub did not provide it ({{why}}); "
               f"pass a local folder, a Hub name such as openai/clip-vit-base-patch32, or text.encoder=scratch")
    try:
        return snapshot_download(name, allow_patterns=HUB_FILES, local_files_only=True)
    except Exception:
        pass  # not in the cache
    try:
        HfApi().model_info(name, timeout=10)
    except Exception as err:
        why = "no such model" if "404" in str(err) or "RepositoryNotFound" in type(err).__name__ else "offline?"
        raise UserError(unknown.format(why=why)) from None
    try:
        return snapshot_download(name, allow_patterns=HUB_FILES)
    except Exception as err:
        raise UserError(f"downloading the text encoder {name!r} failed ({type(err).__name__}); check the connection, or pass a "
                        f"local folder") from None


def text_encoder_for(cfg: TextConfig) -> TextEncoder:
    """The encoder a text config asks for (``cfg.enabled`` must be true)."""
    if cfg.trained:
        return scratch_encoder(cfg)
    return pretrained_encoder(str(cfg.encoder), cfg.max_length)


class quiet_transformers:
    """A context in which transformers shows no progress bars (loading / writing weights) and no info logs."""

    def __enter__(self):
        try:
            from transformers.utils import logging as tlog
        except ImportError:
            self._tlog = None
            return self
        self._tlog = tlog
        self._bars = tlog.is_progress_bar_enabled()
        self._level = tlog.get_verbosity()
        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
        return self

    def __exit__(self, *exc):
        if self._tlog is not None:
            if self._bars:
                self._tlog.enable_progress_bar()
            self._tlog.set_verbosity(self._level)
        return False
