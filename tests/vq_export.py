"""The check the quantizer tests share: a run's exported plain ``diffusers.VQModel`` encodes, picks codes and
decodes as the training model does (decode(quantize(h)) == the training model's reconstruction)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ExportCheck:
    own: object  # the training model (VQAutoencoder) with the checkpoint's weights
    vq: object  # the exported plain diffusers VQModel
    h: torch.Tensor  # pre-quantization latents of 32 held-out images
    indices: torch.Tensor  # the training model's codes
    reconstruction: torch.Tensor


def check_plain_export(run, model_state: dict | None = None, images: int = 32) -> ExportCheck:
    """Rebuild the run's model from ``config.yaml`` and ``model_state`` (default: the newest checkpoint's),
    load ``run/vqvae`` in plain diffusers, and assert both give the same latents, codes and images."""
    from diffusers import VQModel

    from vqldm.autoencoder.config import AutoencoderRunConfig
    from vqldm.autoencoder.model import VQAutoencoder, build_vqmodel
    from vqldm.data.sources import load_datasets
    from vqldm.plumbing.checkpoint import latest_checkpoint, load_training_checkpoint
    from vqldm.plumbing.config import load_config

    cfg = load_config(AutoencoderRunConfig, run / "config.yaml")
    if model_state is None:
        model_state = load_training_checkpoint(latest_checkpoint(run))[0]["model"]
    own = VQAutoencoder(build_vqmodel(cfg.model, cfg.data.image_size, cfg.data.channels, cfg.quantizer), cfg.quantizer)
    own.load_state_dict(model_state)
    own.eval()
    multistage = cfg.quantizer.kind in ("residual", "hierarchical")
    if multistage:  # vqldm's ResidualVQModel, loaded as diffusers loads it: from_pretrained, safetensors
        from vqldm.autoencoder.model import ResidualVQModel, global_codes, nearest_codes

        vq = ResidualVQModel.from_pretrained(run / "vqvae", use_safetensors=True).eval()
        for mine, theirs in zip(own.vqmodel.codebooks(), vq.codebooks()):
            torch.testing.assert_close(theirs.weight, mine.weight, rtol=0, atol=0)
    else:
        vq = VQModel.from_pretrained(run / "vqvae").eval()  # plain diffusers, nothing of vqldm's
        torch.testing.assert_close(vq.quantize.embedding.weight, own.vqmodel.quantize.embedding.weight, rtol=0, atol=0)
    data = load_datasets(cfg.data.source, cfg.data, log=lambda m: None, progress=False)
    x, _ = data.holdout.batch(torch.arange(images))
    with torch.no_grad():
        own_rec, q, own_h = own(x)
        h = vq.encode(x).latents
        assert torch.equal(h, own_h)
        if multistage:  # the training quantizer's global indices are the model's tokens, stage d offset by d K
            idx = global_codes(vq, nearest_codes(vq, h))
        else:
            _, _, (_, _, idx) = vq.quantize(h)
        assert torch.equal(idx.view(q.indices.shape), q.indices)
        assert q.indices.unique().numel() > 1
        torch.testing.assert_close(vq.decode(h).sample, own_rec, rtol=0, atol=1e-5)
    return ExportCheck(own, vq, h, q.indices, own_rec)


def assert_same_checkpoints(a_dir, b_dir) -> dict:
    """Two checkpoint folders hold the same files and bit-identical tensors; returns the first's tensors."""
    from vqldm.plumbing.checkpoint import load_training_checkpoint

    a, _ = load_training_checkpoint(a_dir)
    b, _ = load_training_checkpoint(b_dir)
    assert set(a) == set(b)
    for name in a:
        assert set(a[name]) == set(b[name]), name
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}/{key}"
    return a
