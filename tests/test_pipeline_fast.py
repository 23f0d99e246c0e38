"""The frozen TorchScript UNet (pipelines/fast.py): same images as the eager UNet, rebuilt when weights change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqldm.pipelines.fast import FrozenUNet
from vqldm.diffusion.model import unet_latent_shape
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


def test_untraceable_model_falls_back_to_the_eager_images(monkeypatch):
    pipe = tiny_pipeline()
    kw = dict(batch_size=2, num_inference_steps=STEPS, output_type="np")
    eager = pipe(generator=gen(3), **kw).images

    def no_trace(*args, **kwargs):
        raise RuntimeError("cannot trace this")

    monkeypatch.setattr(torch.jit, "trace", no_trace)
    pipe.use_frozen_unet()
    with pytest.warns(UserWarning, match="could not freeze the UNet.*running it eagerly"):
        fallback = pipe(generator=gen(3), **kw).images
    assert pipe._frozen._broken and np.array_equal(fallback, eager)
    assert all(type(m).__name__ != "_PackedConv2d" for m in pipe.unet.modules())  # the failed build put the convs back


def test_convolutions_oneDNN_cannot_pack_fall_back_to_the_plain_frozen_graph(monkeypatch):
    import warnings

    pipe = tiny_pipeline()
    x, t = torch.randn(2, *unet_latent_shape(pipe.unet)), torch.tensor(5)

    def cannot_pack(*args, **kwargs):
        raise RuntimeError("no packing on this machine")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_convolution_weight", cannot_pack)
    frozen = FrozenUNet(pipe.unet)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # no "running it eagerly"
        out = frozen(x, t).sample
        eager = pipe.unet(x, t).sample
    assert not frozen._broken and not frozen.pack_convolutions and len(frozen._graphs) == 1
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=0)
    assert all(type(m).__name__ != "_PackedConv2d" for m in pipe.unet.modules())


def test_frozen_graph_runs_packed_convolutions_and_leaves_the_unet_alone():
    pipe = tiny_pipeline(num_classes=3)
    convs = {name: m for name, m in pipe.unet.named_modules() if isinstance(m, torch.nn.Conv2d)}
    keys = list(pipe.unet.state_dict())
    x, t = torch.randn(2, *unet_latent_shape(pipe.unet)), torch.tensor(7)
    labels = torch.tensor([0, 2])
    frozen, plain = FrozenUNet(pipe.unet), FrozenUNet(pipe.unet, pack_convolutions=False)
    with torch.no_grad():
        packed_out, plain_out = frozen(x, t, labels).sample, plain(x, t, labels).sample
        eager = pipe.unet(x, t, class_labels=labels).sample
    kinds = {node.kind() for graph in frozen._graphs.values() for node in graph.graph.nodes()}
    assert "mkldnn::_convolution_pointwise" in kinds
    assert "mkldnn::_convolution_pointwise" not in {n.kind() for g in plain._graphs.values() for n in g.graph.nodes()}
    torch.testing.assert_close(packed_out, eager, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain_out, eager, atol=1e-5, rtol=0)
    # the eager UNet keeps its own modules, names and trainability
    assert {name: m for name, m in pipe.unet.named_modules() if isinstance(m, torch.nn.Conv2d)} == convs
    assert list(pipe.unet.state_dict()) == keys and all(p.requires_grad for p in pipe.unet.parameters())


# ----------------------------------------------------------------------------- vqldm generate --unet-path auto
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast") / "pipe"
    tiny_pipeline().save_pretrained(root)
    return root


def generate(folder, out, monkeypatch, capsys, *argv):
    """`vqldm generate` into a folder: (the decoded images as floats, UNet calls that ran frozen, stderr)."""
    from vqldm.cli import main as cli, generate as generate_module

    images, frozen_calls = [], []
    monkeypatch.setattr(generate_module, "_write_batch", lambda batch, *rest: images.append(batch))
    graph = FrozenUNet._graph
    monkeypatch.setattr(FrozenUNet, "_graph", lambda self, *a: frozen_calls.append(1) or graph(self, *a))
    code = cli.main(["generate", "--no-progress", "--model", str(folder), "--out", f"{out}/", "--seed", "5", *map(str, argv)])
    err = capsys.readouterr().err
    assert code == 0, err
    return torch.cat(images), len(frozen_calls), err


def test_auto_path_freezes_a_long_job_with_the_eager_images(tiny_folder, tmp_path, monkeypatch, capsys):
    from vqldm.pipelines.fast import FROZEN_MIN_UNET_CALLS

    steps = FROZEN_MIN_UNET_CALLS // 2  # 2 batches x steps = the threshold
    job = ["--num-images", 4, "--batch-size", 2, "--steps", steps]
    auto, frozen_calls, err = generate(tiny_folder, tmp_path / "auto", monkeypatch, capsys, *job)
    assert frozen_calls == 2 * steps and "frozen CPU UNet" in err
    eager, frozen_calls, err = generate(tiny_folder, tmp_path / "eager", monkeypatch, capsys, *job, "--unet-path", "eager")
    assert frozen_calls == 0 and "frozen" not in err
    assert auto.shape == eager.shape == (4, 3, 16, 16)
    assert (auto - eager).abs().max() < 1e-5


def test_auto_path_keeps_a_short_job_eager(tiny_folder, tmp_path, monkeypatch, capsys):
    from vqldm.pipelines.fast import FROZEN_MIN_UNET_CALLS

    steps = FROZEN_MIN_UNET_CALLS // 2 - 1  # one call short of the threshold
    _, frozen_calls, err = generate(tiny_folder, tmp_path / "a", monkeypatch, capsys,
                                    "--num-images", 4, "--batch-size", 2, "--steps", steps)
    assert frozen_calls == 0 and "frozen" not in err
    _, frozen_calls, _ = generate(tiny_folder, tmp_path / "b", monkeypatch, capsys, "--num-images", 1, "--steps", 2,
                                  "--unet-path", "frozen")
    assert frozen_calls == 2  # asked for, the frozen UNet runs however short the job
