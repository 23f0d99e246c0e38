"""A frozen TorchScript copy of the UNet for CPU sampling: same weights, same maths, less overhead.

At latent sizes like 8x8 or 16x16 a diffusers ``UNet2DModel`` step is dominated by per-operator cost
(Python dispatch, GroupNorm/SiLU/add round trips, weight re-layout inside every convolution), not by
FLOPs. Tracing the UNet once per input signature, freezing it (weights become constants, dead branches
go) and running ``torch.jit.optimize_for_inference`` (oneDNN convolutions with pre-packed weights)
removes most of that. ``benchmarks/bench_sampling.py`` measures it against diffusers' ``LDMPipeline``;
images agree with the eager UNet to ~1e-6.

The frozen copy holds its own copy of the weights, so it is rebuilt whenever a parameter of the eager
UNet is replaced or updated in place (tracked by storage pointer and version counter), and it is used
only where it applies: CPU, float32, no autograd. Anything else, or a model that cannot be traced, runs
the eager UNet.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import torch
from torch import nn


# Where building the frozen copy pays off: a build costs 0.4-0.8 s per batch shape and saves 1.3-15 ms per
# UNet call, a break-even of 50-320 calls (the shipped model at batch 4-32, a CompVis-shaped 64 px one at
# batch 1-16, 1 and 2 threads; table in docs/results.md). Fewer calls sample eagerly on the "auto" path.
FROZEN_MIN_UNET_CALLS = 300
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


def _weights_fingerprint(module: nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in module.parameters())


class FrozenUNet:
    """Calls like ``unet(sample, t, class_labels=...)`` and returns an object with ``.sample``.

    ``optimize=True`` adds ``torch.jit.optimize_for_inference`` on top of ``torch.jit.freeze``.
    Compiled graphs are cached per (shape, timestep dtype, label shape); building one takes as long as the
    time it saves over 50-320 UNet calls, so it pays off over many batches (``FROZEN_MIN_UNET_CALLS``).
    """

    def __init__(self, unet: nn.Module, optimize: bool = True):
        self.unet = unet
        self.optimize = optimize
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
            try:
                with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and tracer notices
                    traced = torch.jit.trace(_Forward(self.unet, labels is not None).eval(), inputs, check_trace=False)
                    graph = torch.jit.freeze(traced)
                    if self.optimize:
                        graph = torch.jit.optimize_for_inference(graph)
            finally:
                for p, r in zip(self.unet.parameters(), requires):
                    p.requires_grad_(r)
            self._graphs[key] = graph
        return graph

    def __call__(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None = None):
        if not self.applies_to(sample):
            return self.unet(sample, timestep, class_labels=class_labels)
        t = timestep if torch.is_tensor(timestep) else torch.tensor(timestep)
        t = t.reshape(()) if t.numel() == 1 else t
        try:
            graph = self._graph(sample, t, class_labels)
            out = graph(sample, t) if class_labels is None else graph(sample, t, class_labels)
        except Exception as err:  # an untraceable model: say so once, then run eager for good
            self._broken = True
            warnings.warn(f"vqldm: could not freeze the UNet for fast CPU sampling ({type(err).__name__}: {err}); "
                          "running it eagerly", stacklevel=2)
            return self.unet(sample, timestep, class_labels=class_labels)
        return SimpleNamespace(sample=out)
