"""The real side of every comparison: the held-out split at the model's size, a fixed subset of it, and
other real images disjoint from that subset (the real-vs-real floor every FD / KID is read against)."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.config import DataConfig
from ..data.sources import load_datasets
from ..plumbing.errors import UserError

MIN_REFERENCE_IMAGES = 2  # a covariance needs two samples; FD on a handful of images is noise, but defined


def training_holdout_fraction(data_section: dict | None, source: str) -> float | None:
    """The ``data.holdout_fraction`` a training run used when it trained on the folder ``source`` (the same
    path), so that evaluation reads that run's held-out split and not the default one; else None."""
    section = data_section or {}
    trained_on, fraction = section.get("source"), section.get("holdout_fraction")
    if fraction is None or not trained_on or not Path(source).expanduser().is_dir():
        return None
    try:
        same = Path(trained_on).expanduser().resolve() == Path(source).expanduser().resolve()
    except OSError:
        return None
    return float(fraction) if same else None


def load_reference_data(source: str, image_size: int, channels: int, fit: str, progress: bool,
                        holdout_fraction: float | None = None):
    """The splits of ``source`` at the model's size; its held-out split is the real side of every comparison.
    ``holdout_fraction`` (folders): the split the model was trained with (default: DataConfig's)."""
    labels = "folders" if Path(source).expanduser().is_dir() and any(p.is_dir() for p in Path(source).expanduser().iterdir()) else "none"
    split = {} if holdout_fraction is None else {"holdout_fraction": holdout_fraction}
    cfg = DataConfig(image_size=image_size, channels=channels, fit=fit, labels=labels, **split)
    ds = load_datasets(source, cfg, log=lambda m: tqdm.write(m), progress=progress)
    if len(ds.holdout) < MIN_REFERENCE_IMAGES:
        raise UserError(f"the held-out split of {source!r} has {len(ds.holdout)} image{'s' if len(ds.holdout) != 1 else ''}; "
                        f"a Fréchet distance needs at least {MIN_REFERENCE_IMAGES} (and hundreds to mean much): evaluate on "
                        f"a larger folder or dataset")
    return ds


def real_indices(num_items: int, n: int, seed: int) -> torch.Tensor:
    """The indices :func:`real_images` takes: a fixed random subset of ``n`` (all if fewer), sorted."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(num_items, generator=g)[: min(n, num_items)].sort().values


def real_images(data, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` held-out images (a fixed random subset; all of them if fewer) in [-1, 1], with labels."""
    return data.batch(real_indices(len(data), n, seed))


def other_real_images(ds, exclude: torch.Tensor, n: int, seed: int, train_when_short: bool = False) -> tuple[torch.Tensor | None, str]:
    """Up to ``n`` real images disjoint from the held-out images ``exclude`` (indices), for the real-vs-real
    floor, and where they came from. The rest of the held-out split first (a fixed random subset); when it
    has fewer than ``n``: the training split if ``train_when_short`` (and it has ``n``), else what the
    held-out split has (the description gives the count); the training split when the held-out split has
    fewer than 2 others. ``(None, why)`` when there are not 2 images anywhere."""
    holdout = ds.holdout
    keep = torch.ones(len(holdout), dtype=torch.bool)
    keep[torch.as_tensor(exclude, dtype=torch.long)] = False
    rest = keep.nonzero().flatten()
    train = getattr(ds, "train", None)
    n_train = len(train) if train is not None else 0
    if len(rest) >= n or (len(rest) >= 2 and not (train_when_short and n_train >= n)):
        idx = rest[real_indices(len(rest), n, seed)]
        short = "" if len(idx) >= n else f" (only {len(idx)}: the held-out split has {len(holdout)} images, fewer than {len(exclude)} + {n})"
        return holdout.batch(idx)[0], f"{len(idx)} other held-out images{short}"
    if n_train >= 2:
        idx = real_indices(n_train, n, seed)
        short = "" if len(idx) >= n else f" (only {len(idx)})"
        return train.batch(idx)[0], f"{len(idx)} training-split images{short} (the held-out split has {len(rest)} others)"
    return None, f"no calibration: fewer than 2 real images besides the {len(exclude)} reference ones"
