"""``vqldm train-prior --kind masked|autoregressive``: one flat training loop for a prior over the codes.

build (autoencoder, data geometry, code cache, transformer, EMA, optimizer) -> resume -> loop (cached
codes, label dropout, masking (masked prior) or shifting (autoregressive prior), cross-entropy, NaN guard,
backward, clip, step, EMA, log, sample grids, checkpoints) -> export ``OUT/prior`` (EMA weights, the
vqvae, vqldm.json) -> ``OUT/metrics.json``.

The random draws of step ``s`` on process ``r`` (masks, label dropout) come from a generator seeded with
(seed, s, r), and the batch order from :class:`BatchSampler`: a resumed run is bit-exact.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..autoencoder.model import code_grid, decode_codes
from ..latents.guidance import drop_labels
from ..latents.setup import prepare_latent_stage
from ..plumbing.checkpoint import atomic_write_json, latest_checkpoint
from ..plumbing.config import to_dict
from ..plumbing.ema import EMA
from ..plumbing.errors import UserError
from ..plumbing.images import make_grid, save_png
from ..plumbing.runs import RunLogger, progress_bar
from ..plumbing.trainkit import (
    LossWindow,
    StepGuard,
    StopSignals,
    TrainClock,
    adamw,
    due,
    keep_training,
    learning_rate,
    optimizer_step,
    resume_training,
    run_metrics,
    save_training_state,
    set_learning_rate,
    step_generator,
    stop_if_signalled,
    to_device,
    training_layout,
)
from .config import KINDS, PriorRunConfig
from .export import export_prior_folder
from .model import CodePrior
from .sampling import prior_loss, sample_codes


def build_prior(cfg: PriorRunConfig, codebook_size: int, grid: tuple[int, int], num_classes: int) -> CodePrior:
    m = cfg.model
    return CodePrior(codebook_size=codebook_size, grid_height=grid[0], grid_width=grid[1], num_classes=num_classes,
                     causal=m.kind == "autoregressive", width=m.width, layers=m.layers, heads=m.heads,
                     mlp_ratio=m.mlp_ratio, dropout=m.dropout)


def train_prior(
    cfg: PriorRunConfig,
    out: str | Path,
    autoencoder: str | Path,
    data: str | None = None,
    max_steps: int | None = None,
    resume: bool = False,
) -> dict:
    """Train a prior over the autoencoder's codes, export ``out/prior`` and return the final metrics."""
    if cfg.model.kind not in KINDS:
        raise UserError(f"model.kind is {cfg.model.kind!r}; set it to masked or autoregressive")
    tc, kind = cfg.train, cfg.model.kind
    stage, prior = prepare_latent_stage(
        cfg, out, autoencoder, data, max_steps, resume, codes=True,
        build_model=lambda vqvae, latent, n_classes: build_prior(cfg, int(vqvae.config.num_vq_embeddings), code_grid(vqvae, latent), n_classes))
    acc, log, progress, vqvae, run_dir, cache = stage.accelerator, stage.log, stage.progress, stage.vqvae, stage.run_dir, stage.cache
    is_main, device, num_classes, sampler = stage.is_main, stage.device, stage.num_classes, stage.sampler
    gh, gw = code_grid(vqvae, stage.latent)  # (1, L) for a residual / hierarchical autoencoder's L tokens

    # ---------------------------------------------------------------- EMA, optimizer
    prior = training_layout(prior, tc, device)  # a transformer: only its 4-d weights, if any, change order
    ema = EMA(prior, tc.ema_decay, tc.ema_warmup)
    opt = adamw(prior.parameters(), tc, device)
    null = prior.null_class

    # ---------------------------------------------------------------- resume
    resumed = resume_training(run_dir, resume, {"prior": prior}, {"optimizer": opt}, log=log)
    if resumed.checkpoint is not None:
        resumed.restore(lambda: ema.load_state_dict(resumed.files["ema"], int(resumed.state["ema_updates"])))
    step = resumed.step

    prior, opt = acc.prepare(prior, opt)
    raw = acc.unwrap_model(prior)
    ema.to(device)
    n_params = sum(p.numel() for p in raw.parameters())
    log(f"train-prior: {kind} prior, {n_params / 1e6:.2f}M parameters, {gh}x{gw} grid of {raw.config.codebook_size} codes, "
        f"{len(cache.train)} training items, {num_classes or 'no'} classes, {acc.num_processes} process(es), "
        f"global batch {tc.batch_size * acc.num_processes}")

    def save_checkpoint(at_step: int) -> Path | None:
        acc.wait_for_everyone()
        if not is_main:
            return None
        return save_training_state(
            run_dir, at_step, clock, tc.keep_checkpoints, modules={"prior": raw}, optimizers={"optimizer": opt},
            tensors={"ema": ema.state_dict()}, state={"ema_updates": ema.num_updates, "config": to_dict(cfg), "cache_key": cache.key},
        )

    def sample_grid(at_step: int) -> None:
        ema.model.eval()
        n = tc.num_sample_images
        labels = torch.arange(n, device=device) % num_classes if num_classes else None
        codes = sample_codes(ema.model, kind, labels, n, cfg.sampling, tc.seed)
        images = decode_codes(vqvae, codes, (gh, gw)).float().cpu()
        save_png(make_grid(images, nrow=min(num_classes, n) if num_classes else None), run_dir / "images" / f"samples_{at_step:08d}.png")

    # ---------------------------------------------------------------- loop
    logger = RunLogger(run_dir, is_main)
    last_ckpt = latest_checkpoint(run_dir)
    batches = sampler.batches(step)
    window, steps_done = LossWindow(), 0
    clock = TrainClock(resumed.seconds)
    bar = progress_bar(tc.max_steps, step, f"train-prior ({kind})", enabled=progress)
    with StopSignals() as signals:
        guard = StepGuard(tc, signals, clock, acc, log=log)  # skip/stop decisions agreed by every process
        while keep_training(tc, step, guard):
            codes, labels = cache.train.batch(next(batches))  # B x T code ids, B labels
            codes = to_device(codes, device)
            g = step_generator(tc.seed, step, acc.process_index)
            class_labels = to_device(drop_labels(labels, cfg.objective.label_dropout, null, g), device) if num_classes else None
            set_learning_rate(opt, learning_rate(tc, step))
            prior.train()
            with acc.accumulate(prior):
                with acc.autocast():
                    loss = prior_loss(prior, codes, class_labels, g, raw.config.causal, raw.mask_id, cfg.objective.mask_schedule)
                guard.check(loss, step, last_ckpt)  # a bad step is skipped on the device (no host read)
                optimizer_step(loss, opt, prior.parameters(), tc.grad_clip, acc, guard=guard)
            if acc.sync_gradients:
                ema.update(raw, skip=guard.found)
            step += 1
            steps_done += 1
            bar.update(1)
            guard.after_step(step)  # agreed stop flags; at settle points the bad-step tally

            # -------------------------------------------------------- logging, grids, checkpoints
            window.add(loss)
            if due(step, tc.log_every, tc):
                mean_loss = window.mean(acc)
                logger.scalars(step, {"train/loss": mean_loss, "train/lr": opt.param_groups[0]["lr"]})
                bar.set_postfix(loss=f"{mean_loss:.4f}")
            if is_main and due(step, tc.image_every, tc):
                sample_grid(step)
            if step % tc.checkpoint_every == 0 and step < tc.max_steps:
                last_ckpt = save_checkpoint(step) or last_ckpt
            stop_if_signalled(guard, step, save_checkpoint, bar, logger, run_dir)
    bar.close()
    clock.stop()
    steps_done = guard.trained_steps(steps_done)
    save_checkpoint(step)
    logger.loss_curves(["train/loss", "train/lr"])

    # ---------------------------------------------------------------- export + final metrics
    metrics: dict = {}
    if is_main:
        metrics = run_metrics(step, steps_done, clock, tc, acc, n_params, window.last_mean, kind=kind, grid=[gh, gw],
                              train_items=len(cache.train), num_classes=num_classes,
                              code_cache={"folder": str(cache.folder), "key": cache.key, "built": cache.built})
        export_prior_folder(vqvae.cpu(), ema.model.cpu(), run_dir / "prior", kind, cfg.sampling, stage.class_names, stage.data.image_size,
                            extra={"step": step, "training_config": to_dict(cfg)})
        atomic_write_json(run_dir / "metrics.json", metrics)
        log(f"done: {step} steps, loss {window.last_mean:.4f}; {kind} prior in {run_dir / 'prior'}")
    logger.close()
    acc.wait_for_everyone()
    acc.end_training()
    return metrics
