"""Training precision settings: ``train.mixed_precision: auto`` and ``train.tf32``, and the optimizer."""

from __future__ import annotations

import pytest
import torch

from vqldm.autoencoder.config import load_autoencoder_config
from vqldm.plumbing.errors import UserError
from vqldm.plumbing.trainkit import adamw, autocast_precision


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
