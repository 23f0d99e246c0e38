"""A frozen TorchScript copy of the UNet for CPU sampling: same weights, same maths, less overhead.

At latent sizes like 8x8 or 16x16 a diffusers ``UNet2DModel`` step is dominated by per-operator cost
(Python dispatch, GroupNorm/SiLU/add round trips, weight re-layout inside every convolution), not by
FLOPs. Per input signature the copy is built once: every ``nn.Conv2d`` gets its weight re-laid out by
oneDNN for the shape it sees (``mkldnn._reorder_convolution_weight``, the packing inductor's CPU backend
does), so convolutions run on dense activations with no per-call weight reorder and no
``to_mkldnn``/``to_dense`` round trips; then the UNet is traced, frozen (weights become constants, dead
branches go) and passed through ``torch.jit.optimize_for_inference``. ``benchmarks/bench_sampling.py``
measures it against diffusers' ``LDMPipeline``; images agree with the eager UNet to ~1e-6.

The frozen copy holds its own copy of the weights, so it is rebuilt whenever a parameter of the eager
UNet is replaced or updated in place (tracked by storage pointer and version counter), and it is used
only where it applies: CPU, float32, no autograd. Anything else, or a model that cannot be traced, runs
the eager UNet. The eager UNet itself is left as it was (its convolutions are swapped only while tracing).
"""

from __future__ import annotations

import functools
import warnings
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace
from typing import List, Optional, Union

import torch
from torch import nn


# Where building the frozen copy pays off: a build costs 0.5-1.1 s per batch shape and saves 3-28 ms per UNet
# call, a break-even of 39-180 calls (the shipped model at batch 1-32, a CompVis-shaped 64 px one at batch
# 1-16, 1 and 2 threads; `bench_sampling.py --break-even`, table in docs/results.md). Fewer calls sample
# eagerly on the "auto" path.
FROZEN_MIN_UNET_CALLS = 200
# How a pipeline runs its UNet while sampling (VQLatentDiffusionPipeline.choose_unet_path): "auto" picks the
# frozen copy for jobs of at least FROZEN_MIN_UNET_CALLS UNet calls where it applies.
UNET_PATHS = ("auto", "eager", "frozen")


class _Forward(nn.Module):
    def __init__(self, unet: nn.Module, with_labels: bool):
        super().__init__()
        self.unet = unet
        self.with_labels = with_labels

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None):
        if self.with_labels:
            return self.unet(sample, timestep, class_labels=class_labels, return_dict=False)[0]
        return self.unet(sample, timestep, return_dict=False)[0]


@functools.cache
def _packed_conv():
    """oneDNN's convolution on a pre-packed weight, scripted (once, on first use) so the tracer records it:
    the tracer cannot record the op's empty ``Scalar?[]`` argument itself."""

    def packed_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: List[int],
                    stride: List[int], dilation: List[int], groups: int) -> torch.Tensor:
        no_scalars: List[Optional[Union[int, float, complex]]] = []
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, padding, stride, dilation, groups, "none", no_scalars, "")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
        return torch.jit.script(packed_conv)


class _PackedConv2d(nn.Module):
    """``conv`` with its weight re-laid out once by oneDNN for inputs of ``input_shape``.

    Same maths as ``conv`` (outputs agree to float rounding). The shape matters: a weight packed for no
    shape in particular is reordered again by oneDNN on every call, which loses more than packing saves.
    """

    def __init__(self, conv: nn.Conv2d, input_shape: torch.Size):
        super().__init__()
        self.padding, self.stride, self.dilation = list(conv.padding), list(conv.stride), list(conv.dilation)
        self.groups = conv.groups
        packed = torch.ops.mkldnn._reorder_convolution_weight(conv.weight.detach(), self.padding, self.stride, self.dilation,
                                                              self.groups, list(input_shape))
        self.register_buffer("packed_weight", packed)
        self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _packed_conv()(x, self.packed_weight, self.bias, self.padding, self.stride, self.dilation, self.groups)


def _packable(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and module.padding_mode == "zeros" and not isinstance(module.padding, str)
            and module.weight.dtype == torch.float32 and module.weight.device.type == "cpu")


@contextmanager
def _packed_convolutions(model: nn.Module, inputs: tuple):
    """While inside, every packable ``nn.Conv2d`` of ``model`` is a :class:`_PackedConv2d` for the input
    shape it sees on ``inputs`` (one eager forward finds the shapes); the originals are back on exit."""
    if not torch.backends.mkldnn.is_available():
        yield
        return
    shapes: dict[nn.Module, torch.Size] = {}

    def record(module, args) -> None:  # a pre-hook that returned a value would replace the inputs
        shapes.setdefault(module, args[0].shape)

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if _packable(m)]
    try:
        model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    swapped = []  # (parent, name, original conv)
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if child in shapes:
                    setattr(parent, name, _PackedConv2d(child, shapes[child]))
                    swapped.append((parent, name, child))
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _weights_fingerprint(module: nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in module.parameters())


class FrozenUNet:
    """Calls like ``unet(sample, t, class_labels=...)`` and returns an object with ``.sample``.

    ``optimize=True`` adds ``torch.jit.optimize_for_inference`` on top of ``torch.jit.freeze``;
    ``pack_convolutions=True`` runs the convolutions on weights oneDNN packed for the batch shape.
    Compiled graphs are cached per (shape, timestep dtype, label shape); building one takes as long as the
    time it saves over 40-180 UNet calls, so it pays off over many batches (``FROZEN_MIN_UNET_CALLS``).
    """

    def __init__(self, unet: nn.Module, optimize: bool = True, pack_convolutions: bool = True):
        self.unet = unet
        self.optimize = optimize
        self.pack_convolutions = pack_convolutions
        self._graphs: dict[tuple, torch.jit.ScriptModule] = {}
        self._fingerprint: tuple | None = None
        self._broken = False

    @property
    def config(self):
        return self.unet.config

    def clear(self) -> None:
        self._graphs.clear()
        self._fingerprint = None

    def applies_to(self, sample: torch.Tensor) -> bool:
        return (not self._broken and sample.device.type == "cpu" and sample.dtype == torch.float32
                and not torch.is_grad_enabled() and not self.unet.training)

    def _graph(self, sample: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None):
        fingerprint = _weights_fingerprint(self.unet)
        if fingerprint != self._fingerprint:
            self.clear()
            self._fingerprint = fingerprint
        key = (tuple(sample.shape), sample.is_contiguous(memory_format=torch.channels_last), t.dtype, tuple(t.shape),
               None if labels is None else (tuple(labels.shape), labels.dtype))
        graph = self._graphs.get(key)
        if graph is None:
            inputs = (sample, t) if labels is None else (sample, t, labels)
            requires = [p.requires_grad for p in self.unet.parameters()]
            self.unet.requires_grad_(False)  # traced weights must not carry autograd state
            forward = _Forward(self.unet, labels is not None).eval()
            try:
                try:
                    graph = self._build(forward, inputs, self.pack_convolutions)
                except Exception:
                    if not self.pack_convolutions:
                        raise
                    self.pack_convolutions = False  # oneDNN cannot pack these convolutions here: the plain frozen graph
                    graph = self._build(forward, inputs, False)
            finally:
                for p, r in zip(self.unet.parameters(), requires):
                    p.requires_grad_(r)
            self._graphs[key] = graph
        return graph

    def _build(self, forward: nn.Module, inputs: tuple, pack: bool) -> torch.jit.ScriptModule:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and tracer notices
            with _packed_convolutions(forward, inputs) if pack else nullcontext():
                traced = torch.jit.trace(forward, inputs, check_trace=False)
            graph = torch.jit.freeze(traced)
            return torch.jit.optimize_for_inference(graph) if self.optimize else graph

    def __call__(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None = None):
        if not self.applies_to(sample):
            return self.unet(sample, timestep, class_labels=class_labels)
        t = timestep if torch.is_tensor(timestep) else torch.tensor(timestep)
        t = t.reshape(()) if t.numel() == 1 else t
        try:
            graph = self._graph(sample, t, class_labels)
            # the graph is frozen and optimised already: the JIT's profiling executor would only add two
            # instrumented (slower) first runs and then run the same graph
            with torch.jit.optimized_execution(False):
                out = graph(sample, t) if class_labels is None else graph(sample, t, class_labels)
        except Exception as err:  # an untraceable model: say so once, then run eager for good
            self._broken = True
            warnings.warn(f"vqldm: could not freeze the UNet for fast CPU sampling ({type(err).__name__}: {err}); "
                          "running it eagerly", stacklevel=2)
            return self.unet(sample, timestep, class_labels=class_labels)
        return SimpleNamespace(sample=out)
