"""Sampling code grids from a prior: pure functions of (model, labels, settings, generator).

* :func:`sample_masked` -- MaskGIT (Chang et al. 2022): start from an all-[mask] grid; at each of S steps
  predict every masked code in parallel, sample it, keep the most confident ones and re-mask the rest,
  so that cos(pi/2 * s/S) of the grid is still masked after step s. Known codes (inpainting) never change.
* :func:`sample_autoregressive` -- one code per step in raster order with a KV cache (VQ-VAE's prior).

Both: classifier-free guidance on the logits, l = l_null + g (l_class - l_null), in one batched call;
temperature; top-k and top-p (nucleus) filtering. Random draws come from a generator on the model's device
seeded from the caller's CPU ``torch.Generator``: a seed gives the same grid on that device, every time.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from ..plumbing.trainkit import to_device
from .config import PriorSamplingConfig


def mask_ratio(progress: torch.Tensor | float, schedule: str = "cosine"):
    """Share of the grid masked at ``progress`` in [0, 1] (1 at the start, 0 at the end).

    cosine: cos(pi/2 * p) (MaskGIT's choice: few codes early, when the model knows least); linear: 1 - p.
    """
    if schedule == "cosine":
        return torch.cos(math.pi / 2 * torch.as_tensor(progress, dtype=torch.float64)) if isinstance(progress, torch.Tensor) \
            else math.cos(math.pi / 2 * progress)
    if schedule == "linear":
        return 1 - progress
    raise ValueError(f"unknown mask schedule {schedule!r}; choose cosine or linear")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Keep the ``top_k`` largest logits and/or the smallest set whose probability reaches ``top_p``."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def guided_logits(model, codes: torch.Tensor, labels: torch.Tensor | None, guidance: float, null_class: int | None) -> torch.Tensor:
    """Logits with classifier-free guidance (conditional and null halves in one batch)."""
    if labels is None or guidance == 1.0:
        return model(codes, labels).float()
    null = torch.full_like(labels, null_class)
    cond, uncond = model(torch.cat([codes, codes]), torch.cat([labels, null])).float().chunk(2)
    return uncond + guidance * (cond - uncond)


def device_generator(generator: torch.Generator | None, device) -> torch.Generator | None:
    """A generator on ``device`` seeded from the CPU ``generator``: draws stay on the device (no copy of the
    B x T x K probabilities to the CPU per step) and a seed still gives the same codes on that device."""
    if generator is None:
        return None
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def _sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Categorical draws from ``logits / temperature`` -> (ids, their probability). ``generator`` lives on
    the logits' device (:func:`device_generator`)."""
    probs = (logits / max(temperature, 1e-6)).softmax(-1)
    ids = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).view(probs.shape[:-1])
    return ids, probs.gather(-1, ids[..., None])[..., 0]


@torch.no_grad()
def sample_masked(
    model,
    batch_size: int,
    labels: torch.Tensor | None = None,
    settings: PriorSamplingConfig | None = None,
    known: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    schedule: str = "cosine",
) -> torch.Tensor:
    """B x T code ids in ``settings.steps`` parallel rounds. ``known``: B x T ids with -1 where the code is
    to be generated (inpainting); known codes never change.

    ``settings.choice_temperature`` adds annealed Gumbel noise to the confidences that decide which codes
    stay (MaskGIT's 4.5): early choices are less greedy, the last ones are the model's most confident codes.
    """
    s_ = settings or PriorSamplingConfig()
    steps, guidance, temperature, top_k, top_p = s_.steps, s_.guidance, s_.temperature, s_.top_k, s_.top_p
    choice_temperature = s_.choice_temperature
    device = model.position.device
    generator = device_generator(generator, device)
    t = model.seq_len
    codes = torch.full((batch_size, t), model.mask_id, dtype=torch.long, device=device)
    fixed = torch.zeros((batch_size, t), dtype=torch.bool, device=device)
    if known is not None:
        fixed = known.to(device) >= 0
        codes = torch.where(fixed, known.to(device), codes)
    free = (~fixed).sum(dim=1)  # codes to generate, per image
    rounds = range(steps)
    for s in progress(rounds) if progress else rounds:
        masked = codes == model.mask_id
        if not masked.any():
            break
        logits = filter_logits(guided_logits(model, codes, labels, guidance, model.null_class), top_k, top_p)
        ids, prob = _sample(logits, temperature, generator)
        ids = torch.where(masked, ids, codes)
        # how many of the free codes stay masked after this step
        keep_masked = torch.floor(free.double() * mask_ratio((s + 1) / steps, schedule)).long()
        confidence = torch.log(prob.clamp_min(1e-30)).double()
        if choice_temperature > 0:
            u = torch.rand(confidence.shape, generator=generator, dtype=torch.float64, device=device)
            gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-12)))
            confidence = confidence + choice_temperature * (1 - (s + 1) / steps) * gumbel
        confidence = confidence.masked_fill(~masked, float("inf"))  # decided codes are never re-masked
        order = confidence.argsort(dim=1)  # least confident first
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(t, device=device).expand_as(order))
        remask = rank < keep_masked[:, None]
        codes = torch.where(remask, torch.full_like(ids, model.mask_id), ids)
    return codes


@torch.no_grad()
def sample_autoregressive(
    model,
    batch_size: int,
    labels: torch.Tensor | None = None,
    settings: PriorSamplingConfig | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> torch.Tensor:
    """B x T code ids, one per step in raster order, with a KV cache (T steps of one token each;
    ``settings.steps`` does not apply)."""
    s_ = settings or PriorSamplingConfig()
    guidance, temperature, top_k, top_p = s_.guidance, s_.temperature, s_.top_k, s_.top_p
    device = model.position.device
    generator = device_generator(generator, device)
    guided = labels is not None and guidance != 1.0
    first = model.class_tokens(labels, batch_size, device)
    if guided:
        first = torch.cat([first, torch.full_like(first, model.null_class)])
    caches = [[] for _ in model.blocks]
    token, out = first, []
    positions = range(model.seq_len)
    for i in progress(positions) if progress else positions:
        logits = model.step(token, i, caches).float()
        if guided:
            cond, uncond = logits.chunk(2)
            logits = uncond + guidance * (cond - uncond)
        ids, _ = _sample(filter_logits(logits, top_k, top_p), temperature, generator)
        out.append(ids)
        token = torch.cat([ids, ids]) if guided else ids
    return torch.stack(out, dim=1)


def masked_training_batch(codes: torch.Tensor, mask_id: int, generator: torch.Generator, schedule: str = "cosine"):
    """MaskGIT training input: per image a ratio r = schedule(u), u ~ U(0, 1), and ceil(r T) >= 1 codes
    replaced by the mask id -> (input codes, boolean mask of the positions to predict)."""
    b, t = codes.shape
    u = torch.rand(b, generator=generator, dtype=torch.float64)
    n = torch.ceil(mask_ratio(u, schedule) * t).clamp(min=1).long()
    scores = torch.rand((b, t), generator=generator)
    rank = scores.argsort(dim=1).argsort(dim=1)
    mask = to_device(rank < n[:, None], codes.device)
    return codes.masked_fill(mask, mask_id), mask


def prior_loss(model, codes: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator, causal: bool,
               mask_id: int, schedule: str = "cosine"):
    """Cross-entropy of the codes: on the masked positions (masked prior) or on every next code
    (autoregressive). ``model`` may be wrapped (DDP), so its kind and mask id are passed in."""
    if causal:
        logits = model(codes[:, :-1], labels)  # B x T x K: logits i predict code i
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), codes.reshape(-1))
    inputs, mask = masked_training_batch(codes, mask_id, generator, schedule)
    logits = model(inputs, labels)
    # the mean over the masked positions; ignore_index instead of logits[mask] (a boolean index would make
    # the host wait for the device to learn how many positions there are)
    targets = codes.masked_fill(~mask, -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)


def sample_codes(prior: torch.nn.Module, kind: str, labels: torch.Tensor | None, batch_size: int, sampling, seed: int,
                 guidance: float | None = None, steps: int | None = None, known: torch.Tensor | None = None, progress=None):
    """B x T codes from either kind of prior with the given sampling settings (defaults: ``sampling``)."""
    g = torch.Generator().manual_seed(seed)
    settings = dataclasses.replace(sampling, **{k: v for k, v in (("guidance", guidance), ("steps", steps)) if v is not None})
    if labels is None:
        settings = dataclasses.replace(settings, guidance=1.0)  # unconditional samples are not guided
    if kind == "masked":
        return sample_masked(prior, batch_size, labels, settings, known=known, generator=g, progress=progress)
    if known is not None:
        raise ValueError("inpainting (known codes) needs a masked prior; this one is autoregressive")
    return sample_autoregressive(prior, batch_size, labels, settings, generator=g, progress=progress)
