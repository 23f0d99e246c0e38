"""Training precision and speed settings: ``train.mixed_precision: auto``, ``train.tf32``, ``train.channels_last``, ``train.compile``, and the optimizer."""

from __future__ import annotations

import pytest
import torch

from vqldm.autoencoder.config import load_autoencoder_config
from vqldm.plumbing.errors import UserError
from vqldm.plumbing.trainkit import adamw, autocast_precision, training_layout


@pytest.mark.parametrize("setting, cuda, bf16, expected", [
    ("auto", False, False, "no"),  # CPU runs stay fp32, whatever the config says
    ("bf16", False, False, "no"),
    ("auto", True, True, "bf16"),  # bf16 where the GPU has it: fp32's exponent range, no loss scaling
    ("auto", True, False, "fp16"),  # older GPUs: fp16 with accelerate's gradient scaler
    ("no", True, True, "no"),
    ("fp16", True, True, "fp16"),
])
def test_autocast_precision(setting, cuda, bf16, expected):
    assert autocast_precision(setting, cuda, bf16) == expected


def test_config_takes_auto_precision_and_tf32():
    cfg = load_autoencoder_config("tiny", ["train.mixed_precision=auto", "train.tf32=false"])
    assert cfg.train.mixed_precision == "auto" and cfg.train.tf32 is False
    assert load_autoencoder_config("tiny").train.tf32 is True  # on by default (GPUs only)
    with pytest.raises(UserError, match="mixed_precision"):
        load_autoencoder_config("tiny", ["train.mixed_precision=fp8"])


def test_adamw_on_cpu_is_fused_with_the_loop_settings():
    tc = load_autoencoder_config("tiny").train
    opt = adamw([torch.nn.Parameter(torch.zeros(3))], tc, "cpu")
    assert opt.defaults["fused"]  # the kernel that can skip a bad step on the device (found_inf)
    assert opt.defaults["lr"] == tc.lr and opt.defaults["betas"] == tuple(tc.adam_betas)


def test_config_takes_channels_last_and_compile():
    tc = load_autoencoder_config("tiny").train
    assert tc.channels_last == "auto" and tc.compile is False  # defaults: NHWC on CUDA only; compile opt-in
    tc = load_autoencoder_config("tiny", ["train.channels_last=true", "train.compile=true"]).train
    assert tc.channels_last is True and tc.compile is True
    with pytest.raises(UserError, match="channels_last"):
        load_autoencoder_config("tiny", ["train.channels_last=sometimes"])


@pytest.mark.parametrize("setting, device, expected", [
    ("auto", "cpu", False),  # no gain measured on CPU (docs/results.md)
    ("auto", "cuda", True),
    (True, "cpu", True),
    (False, "cuda", False),
])
def test_training_layout(setting, device, expected):
    tc = load_autoencoder_config("tiny", [f"train.channels_last={str(setting).lower()}"]).train
    conv = training_layout(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2)), tc, device)
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last) is expected
    assert conv[0].weight.is_contiguous() is not expected
    assert conv[1].weight.is_contiguous()  # 2-d weights keep their order


def test_channels_last_training_resumes_exactly_and_matches_contiguous(image_folder, tmp_path):
    """A channels-last run (CPU here, as CUDA's auto would) resumes bit-exactly -- Adam's moments loaded from
    the checkpoint meet weights of the other memory order -- and trains the same model as a contiguous run."""
    from safetensors.torch import load_file

    from vqldm.cli.main import main

    fast = ["--config", "tiny", "--data", str(image_folder), "--set", "train.progress=false", "--set",
            "train.checkpoint_every=4", "--set", "train.image_every=100", "--set", "data.holdout_fraction=0.2"]
    nhwc = ["--set", "train.channels_last=true"]
    assert main(["train-autoencoder", *fast, *nhwc, "--out", str(tmp_path / "straight"), "--max-steps", "8"]) == 0
    assert main(["train-autoencoder", *fast, *nhwc, "--out", str(tmp_path / "resumed"), "--max-steps", "4"]) == 0
    assert main(["train-autoencoder", *fast, *nhwc, "--out", str(tmp_path / "resumed"), "--max-steps", "8", "--resume"]) == 0
    assert main(["train-autoencoder", *fast, "--out", str(tmp_path / "contiguous"), "--max-steps", "8"]) == 0
    weights = {name: load_file(tmp_path / name / "vqvae" / "diffusion_pytorch_model.safetensors")
               for name in ("straight", "resumed", "contiguous")}
    for key, value in weights["straight"].items():
        assert torch.equal(value, weights["resumed"][key]), key
        # another convolution algorithm: the same model up to float rounding over 8 steps
        torch.testing.assert_close(value, weights["contiguous"][key], rtol=1e-3, atol=1e-4)
