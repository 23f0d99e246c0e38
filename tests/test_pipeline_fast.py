"""The frozen TorchScript UNet (pipelines/fast.py): same images as the eager UNet, rebuilt when weights change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqldm.pipelines.fast import FrozenUNet
from vqldm.plumbing.geometry import unet_latent_shape
from test_pipeline_helpers import tiny_pipeline

STEPS = 4


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", ["ddim", "dpm", "euler"])  # int and float timesteps
def test_frozen_unet_gives_the_eager_images(name):
    pipe = tiny_pipeline(num_classes=3)
    pipe.set_scheduler(name)
    kw = dict(batch_size=2, class_labels=[0, 2], guidance_scale=2.0, num_inference_steps=STEPS, output_type="np")
    eager = pipe(generator=gen(1), **kw).images
    pipe.use_frozen_unet()
    frozen = pipe(generator=gen(1), **kw).images
    again = pipe(generator=gen(1), **kw).images
    assert pipe._frozen is not None and len(pipe._frozen._graphs) == 1  # it was used, one graph for one shape
    assert np.abs(frozen - eager).max() < 1e-4
    assert np.array_equal(frozen, again)  # bit-identical run to run


def test_frozen_unet_without_labels_and_per_shape_graphs():
    pipe = tiny_pipeline().use_frozen_unet()
    a = pipe(batch_size=1, num_inference_steps=STEPS, generator=gen(2), output_type="np").images
    b = pipe(batch_size=3, num_inference_steps=STEPS, generator=gen(2), output_type="np").images
    assert len(pipe._frozen._graphs) == 2
    pipe.use_frozen_unet(False)
    ref = pipe(batch_size=3, num_inference_steps=STEPS, generator=gen(2), output_type="np").images
    assert np.abs(b - ref).max() < 1e-4 and a.shape[0] == 1


def test_frozen_copy_is_rebuilt_when_weights_change():
    pipe = tiny_pipeline()
    frozen = FrozenUNet(pipe.unet)
    x, t = torch.randn(2, *unet_latent_shape(pipe.unet)), torch.tensor(10)
    with torch.no_grad():
        before = frozen(x, t).sample
        pipe.unet.conv_out.bias.add_(1.0)  # an in-place update, as an optimizer step would do
        after = frozen(x, t).sample
        eager = pipe.unet(x, t).sample
    torch.testing.assert_close(after, eager, atol=1e-4, rtol=0)
    assert (after - before).abs().min() > 0.5


def test_frozen_unet_steps_aside_for_autograd_and_training():
    pipe = tiny_pipeline()
    frozen = FrozenUNet(pipe.unet)
    x, t = torch.randn(1, *unet_latent_shape(pipe.unet)), torch.tensor(3)
    out = frozen(x, t).sample  # grad mode: the eager UNet, so gradients flow
    assert out.requires_grad and not frozen._graphs
    out.sum().backward()
    assert pipe.unet.conv_out.weight.grad is not None
