"""Training the domain classifier whose features measure FD / KID (``vqldm evaluate train-features``).

A fourth training loop, kept flat like the stage trainers and built from the same trainer kit
(:mod:`vqldm.plumbing.trainkit`): the learning rate is a pure function of the step, the NaN policy skips
one bad batch and then stops, and SIGINT/SIGTERM stop it with one line. Nothing is checkpointed: a
classifier this small is retrained, not resumed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.config import DataConfig
from ..data.loading import train_batches
from ..data.sources import load_datasets
from ..plumbing.errors import UserError
from ..plumbing.runs import progress_bar
from ..plumbing.trainkit import (
    StepGuard,
    StopSignals,
    TrainClock,
    TrainLoopConfig,
    due,
    keep_training,
    learning_rate,
    optimizer_step,
    set_learning_rate,
    stop_if_signalled,
)
from .features import DomainClassifier, DomainClassifierConfig, classifier_accuracy, save_domain_classifier


@dataclass
class FeatureTrainConfig:
    image_size: int = 32
    channels: int = 1
    fit: str = "pad"
    epochs: int = 2
    max_steps: int | None = None  # stop earlier (quick runs / tests)
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    max_images: int | None = None
    seed: int = 0
    augment: bool = True  # random horizontal flips and +-2 px shifts
    detail_layers: int = 2  # detail-sensitive features: both conv activations of the first block (DomainClassifierConfig)
    standardize: bool = True
    statistics_images: int = 10_000  # training images whose features fix the standardisation

    def __post_init__(self):
        for name in ("epochs", "batch_size", "statistics_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips per image and one random shift of up to 2 px per batch (wrapping around)."""
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


def train_domain_classifier(source: str, out: str | Path, cfg: FeatureTrainConfig, progress: bool = True, log=print) -> dict:
    """Train the domain classifier on ``source``'s training split (15% linear warm-up, then cosine to zero),
    fix its feature standardisation on training images, measure its held-out accuracy, and save it to
    ``out``. Returns what is saved beside the weights (steps, seconds, accuracy, the config)."""
    data_cfg = DataConfig(image_size=cfg.image_size, channels=cfg.channels, fit=cfg.fit, max_images=cfg.max_images,
                          labels="folders" if Path(source).expanduser().is_dir() else "none")
    ds = load_datasets(source, data_cfg, log=log, progress=progress)
    if ds.num_classes < 2 or bool((ds.train.labels < 0).any()):
        raise UserError(f"a feature network trains on labelled data with at least 2 classes; {source!r} has {ds.num_classes} "
                        "(use a named dataset or class subfolders)")
    torch.manual_seed(cfg.seed)
    model = DomainClassifier(DomainClassifierConfig(cfg.image_size, cfg.channels, ds.num_classes, class_names=list(ds.train.class_names),
                                                    detail_layers=cfg.detail_layers, standardize=cfg.standardize))
    steps_per_epoch = max(1, len(ds.train) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    tc = TrainLoopConfig(max_steps=total, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         warmup_steps=int(0.15 * total), lr_schedule="cosine", grad_clip=None, seed=cfg.seed,
                         log_every=20)  # the loss on the progress bar every 20 steps
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    clock = TrainClock()
    step = 0
    batches = train_batches(ds.train, ds.train.batch_sampler(cfg.batch_size, cfg.seed), 0, data_cfg, cfg.seed)
    bar = progress_bar(total, 0, "train-features", enabled=progress)
    model.train()
    with StopSignals() as signals:
        guard = StepGuard(tc, signals, clock, log=log)  # one process: the NaN policy and the signals, no reduce
        while keep_training(tc, step, guard):
            x, y = next(batches)
            if cfg.augment:
                x = augment(x, g)
            set_learning_rate(opt, learning_rate(tc, step))
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            guard.check(loss, step)  # a bad step is skipped on the device
            optimizer_step(loss, opt, model.parameters(), tc.grad_clip, guard=guard)
            step += 1
            bar.update(1)
            guard.after_step(step)
            if due(step, tc.log_every, tc):
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            stop_if_signalled(guard, step, None, bar)
    bar.close()
    batches.close()
    seconds = clock.total()
    if cfg.standardize:
        model.eval()
        with torch.inference_mode():
            raw = torch.cat([model.raw_features(x) for x, _ in ds.train.batches(500, cfg.statistics_images)])
        model.set_feature_statistics(raw)
    accuracy = classifier_accuracy(model, ds.holdout)
    info = {"source": ds.source, "train_images": len(ds.train), "steps": step, "train_seconds": round(seconds, 1),
            "test_images": len(ds.holdout), "test_accuracy": accuracy, "train_config": asdict(cfg)}
    save_domain_classifier(model, out, info)
    log(f"done: {step} steps in {seconds:.0f} s; test accuracy {100 * accuracy:.2f}% on {len(ds.holdout)} held-out images; saved to {out}")
    return info
