"""Training batches: the deterministic batch order (:class:`BatchSampler`, a function of seed, epoch and
rank) and the endless, resumable stream of augmented batches a training loop reads (:func:`train_batches`;
random crop and flip are functions of (seed, epoch, image)).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..plumbing.errors import UserError
from .config import DataConfig
from .splits import ImageSplit, chw_tensor, make_loader, to_float


class AugmentedViews(torch.utils.data.Dataset):
    """Training views of a split: item (i, epoch) is image i, cropped at a random place and/or mirrored
    as drawn from (seed, epoch, i) alone, so resumed and multi-process runs see the same pixels."""

    def __init__(self, split: ImageSplit, seed: int, crop: bool, flip: bool):
        self.split, self.seed, self.crop, self.flip = split, seed, crop, flip
        self.in_memory, self.labels = split.in_memory, split.labels

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, epoch = item
        offset, mirror = view_draw(self.seed, epoch, i, self.crop, self.flip)
        arr = self.split.read(i, offset)
        if mirror:
            arr = arr[:, ::-1]
        return chw_tensor(arr), self.split.labels[i]


def view_draw(seed: int, epoch: int, key: int, crop: bool, flip: bool) -> tuple[tuple[float, float], bool]:
    """The crop offset (top, left) and mirroring of image ``key`` (an index, or a streamed image's content
    key) in ``epoch``: drawn from (seed, epoch, key) alone."""
    u = np.random.default_rng([seed, epoch, key]).integers(0, 1001, size=3) / 1000.0
    return ((float(u[0]), float(u[1])) if crop else (0.5, 0.5)), bool(flip and u[2] >= 0.5)


class _StepBatches:
    """The batch_sampler of a training loader: the sampler's batches from ``start_step`` on, each index
    paired with its epoch (for the augmentation)."""

    def __init__(self, sampler: "BatchSampler", start_step: int, with_epoch: bool):
        self.sampler, self.start_step, self.with_epoch = sampler, start_step, with_epoch

    def __iter__(self):
        for step, idx in enumerate(self.sampler.batches(self.start_step), self.start_step):
            epoch = step // self.sampler.steps_per_epoch
            yield [(int(i), epoch) for i in idx] if self.with_epoch else idx.tolist()


def train_batches(split: ImageSplit, sampler: "BatchSampler", start_step: int, cfg: DataConfig, seed: int,
                  pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless training batches (images in [-1, 1], labels) from global step ``start_step`` on: the same
    images, in the same order, with the same crops and flips, as an uninterrupted run would see."""
    if getattr(split, "streaming", False):  # a streamed dataset has its own order (:mod:`.streaming`)
        yield from split.train_batches(sampler, start_step, cfg, seed, pin_memory)
        return
    augment = cfg.random_crop or cfg.random_flip
    dataset = AugmentedViews(split, seed, cfg.random_crop, cfg.random_flip) if augment else split
    if split.in_memory and not augment:  # no decoding: gather in this process
        for idx in sampler.batches(start_step):
            yield split.batch(idx)
        return
    loader = make_loader(dataset, _StepBatches(sampler, start_step, augment), cfg.num_workers, pin_memory)
    for x, y in loader:
        yield to_float(x), y


# ----------------------------------------------------------------------------- batch order
class BatchSampler:
    """Deterministic, resumable, distributed batch order.

    Each epoch is a permutation drawn from ``seed + epoch``; a global batch of ``batch_size * world``
    indices is split so rank ``r`` takes its own slice. ``batches(start_step)`` yields, from global
    step ``start_step`` on, exactly what an uninterrupted run would have yielded.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if num_items < 1:
            raise UserError("the training split is empty; add images")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        # drop_last semantics, but always at least one batch (sampling with wrap-around for tiny sets)
        self.steps_per_epoch = max(1, num_items // self.global_batch)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_items, generator=g)
        need = self.steps_per_epoch * self.global_batch
        if need > self.num_items:
            order = order.repeat((need + self.num_items - 1) // self.num_items)[:need]
        return order

    def batches(self, start_step: int = 0) -> Iterator[torch.Tensor]:
        step = start_step
        while True:
            epoch, within = divmod(step, self.steps_per_epoch)
            order = self._epoch_order(epoch)
            for i in range(within, self.steps_per_epoch):
                chunk = order[i * self.global_batch : (i + 1) * self.global_batch]
                yield chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
                step += 1
