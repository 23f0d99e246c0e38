"""``vqldm train-autoencoder``: one flat training loop for the VQ autoencoder (stage 1).

build (data, model, quantizer, discriminator, optimizers) -> resume -> loop (forward, losses, NaN guard,
backward, step, log, grids, checkpoints) -> export ``OUT/vqvae`` with the measured scaling factor ->
``OUT/metrics.json`` with held-out PSNR, SSIM and codebook statistics. With ``init`` the model (and its
codebook) is a published VQModel's, and the scaling factor is measured on the new images all the same.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.loading import train_batches
from ..data.sources import load_datasets
from ..plumbing.checkpoint import AtomicDir, atomic_write_json, latest_checkpoint
from ..plumbing.config import save_config, to_dict
from ..plumbing.images import make_grid, save_png
from ..plumbing.runs import RunLogger, console, prepare_run_dir, progress_bar
from ..plumbing.trainkit import (
    LossWindow,
    StepGuard,
    StopSignals,
    TrainClock,
    adamw,
    check_max_steps,
    due,
    keep_training,
    learning_rate,
    make_accelerator,
    optimizer_step,
    resume_training,
    run_metrics,
    save_training_state,
    set_learning_rate,
    stop_if_signalled,
    to_device,
    training_layout,
)
from .config import AutoencoderRunConfig
from .evaluate import evaluate_reconstruction, measure_scaling_factor
from .losses import (
    check_discriminator_fits,
    PatchDiscriminator,
    adaptive_weight,
    decoder_adversarial_loss,
    discriminator_loss,
    focal_frequency_loss,
    gradient_loss,
    lecam_penalty,
    load_lpips,
    perceptual_loss,
    reconstruction_loss,
)
from .metrics import codebook_stats, psnr
from .model import VQAutoencoder, build_vqmodel, init_vqmodel


def train_autoencoder(
    cfg: AutoencoderRunConfig,
    out: str | Path,
    data: str | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    init: str | None = None,
) -> dict:
    """Train, export ``out/vqvae`` and return the final metrics (also written to ``out/metrics.json``).
    ``init``: start from a published VQModel (a folder or a Hub repo id; :func:`init_vqmodel`)."""
    check_max_steps(max_steps, cfg.train.grad_accumulation)
    check_discriminator_fits(cfg.loss, cfg.data.image_size)
    if max_steps is not None:
        cfg.train.max_steps = max_steps
    tc = cfg.train
    source = data or cfg.data.source
    acc = make_accelerator(tc)
    is_main = acc.is_main_process
    log = console if is_main else (lambda msg: None)
    # Check every input before writing anything: a failed start leaves no (half-)run folder behind.
    prepare_run_dir(out, resume, is_main, create=False)
    torch.manual_seed(tc.seed)
    if init is None:
        vqmodel = build_vqmodel(cfg.model, cfg.data.image_size, cfg.data.channels, cfg.quantizer)  # rejects impossible sizes
    else:
        vqmodel, line = init_vqmodel(init, cfg)  # rejects other channels; cfg.model becomes the init's
        log(line)

    # ---------------------------------------------------------------- data
    datasets = load_datasets(source, cfg.data, log=log, progress=is_main and tc.progress, accelerator=acc)
    cfg.data.source = datasets.source
    run_dir = prepare_run_dir(out, resume, is_main)
    if is_main:
        save_config(cfg, run_dir / "config.yaml")
        if datasets.skipped:
            atomic_write_json(run_dir / "skipped_files.json", [s.__dict__ for s in datasets.skipped])
    sampler = datasets.train.batch_sampler(tc.batch_size, tc.seed, acc.process_index, acc.num_processes)

    # ---------------------------------------------------------------- model, losses, optimizers
    model = training_layout(VQAutoencoder(vqmodel, cfg.quantizer, seed=tc.seed, keep_codebook=init is not None), tc, acc.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, tc, acc.device)
    use_disc = cfg.loss.disc_weight > 0
    disc = training_layout(PatchDiscriminator(cfg.data.channels, cfg.loss.disc_channels, cfg.loss.disc_layers), tc, acc.device) if use_disc else None
    # AdamW's default weight decay (0.01) for the discriminator, fused where adamw() fuses (skips on the device)
    dopt = torch.optim.AdamW(disc.parameters(), lr=cfg.loss.disc_lr or tc.lr, betas=tc.adam_betas,
                             fused=acc.device.type in ("cpu", "cuda") or None) if use_disc else None
    lpips_model = load_lpips(cfg.loss, log=log)

    # ---------------------------------------------------------------- resume
    modules = {"model": model, **({"disc": disc} if use_disc else {})}
    optimizers = {"optimizer": opt, **({"disc_optimizer": dopt} if use_disc else {})}
    resumed = resume_training(run_dir, resume, modules, optimizers, log=log)
    if resumed.checkpoint is not None:
        model.quantizer.generator.set_state(resumed.files["rng"]["quantizer"])
    step = resumed.step

    device = acc.device
    if use_disc:
        model, opt, disc, dopt = acc.prepare(model, opt, disc, dopt)
    else:
        model, opt = acc.prepare(model, opt)
    if lpips_model is not None:
        lpips_model.to(device)
    raw = acc.unwrap_model(model)
    raw_disc = acc.unwrap_model(disc) if use_disc else None

    def save_checkpoint(at_step: int) -> Path | None:
        acc.wait_for_everyone()
        if not is_main:
            return None
        raw.quantizer.sync_codebook()  # simvq: E = C W of the latest optimizer step, in the saved VQModel
        return save_training_state(
            run_dir, at_step, clock, tc.keep_checkpoints,
            modules={"model": raw, **({"disc": raw_disc} if use_disc else {})},
            optimizers={"optimizer": opt, **({"disc_optimizer": dopt} if use_disc else {})},
            rng={"quantizer": raw.quantizer.generator.get_state()}, state={"config": to_dict(cfg), "init": init},
        )

    # ---------------------------------------------------------------- loop
    logger = RunLogger(run_dir, is_main)
    k = getattr(raw.quantizer, "total_codes", cfg.model.codebook_size)  # residual / hierarchical: K per stage
    epoch_counts = torch.zeros(k, device=device)
    window, steps_done = LossWindow(), 0
    fixed_batch, _ = datasets.holdout.batch(torch.arange(min(16, len(datasets.holdout))))
    last_ckpt = latest_checkpoint(run_dir)
    batches = train_batches(datasets.train, sampler, step, cfg.data, tc.seed, pin_memory=acc.device.type == "cuda")
    clock = TrainClock(resumed.seconds)
    bar = progress_bar(tc.max_steps, step, "train-autoencoder", enabled=is_main and tc.progress)
    with StopSignals() as signals:
        guard = StepGuard(tc, signals, clock, acc, log=log)  # skip/stop decisions agreed by every process
        while keep_training(tc, step, guard):
            x, _ = next(batches)
            x = to_device(x, device)
            opt_step = step // tc.grad_accumulation  # every schedule counts optimizer steps
            model.train()
            set_learning_rate(opt, learning_rate(tc, step))  # a function of the step: resume needs no state
            with acc.accumulate(model):
                with acc.autocast():
                    rec, q, h = model(x, step=opt_step)
                    rec_loss = reconstruction_loss(rec.float(), x, cfg.loss.reconstruction)
                    nll = rec_loss
                    if cfg.loss.frequency_weight > 0:
                        nll = nll + cfg.loss.frequency_weight * focal_frequency_loss(rec.float(), x, cfg.loss.frequency_alpha)
                    if cfg.loss.gradient_weight > 0:
                        nll = nll + cfg.loss.gradient_weight * gradient_loss(rec.float(), x)
                    if lpips_model is not None:
                        p_loss = perceptual_loss(lpips_model, rec.float(), x)
                        nll = nll + cfg.loss.perceptual_weight * p_loss
                    loss = nll + q.loss
                    disc_active = use_disc and opt_step >= cfg.loss.disc_start
                    if disc_active:
                        ramp = min(1.0, (opt_step - cfg.loss.disc_start + 1) / cfg.loss.disc_ramp_steps) if cfg.loss.disc_ramp_steps else 1.0
                        g_loss = decoder_adversarial_loss(raw_disc, rec, cfg.loss.disc_loss)  # unwrapped: no DDP sync
                        d_weight = adaptive_weight(nll, g_loss, raw.last_layer(), cfg.loss.adaptive_weight_max)
                        loss = loss + cfg.loss.disc_weight * ramp * d_weight * g_loss
                guard.check(loss, step, last_ckpt)  # a bad step is skipped on the device (no host read)
                optimizer_step(loss, opt, model.parameters(), tc.grad_clip, acc, guard=guard)
                if disc_active:
                    with acc.autocast():
                        logits_real, logits_fake = disc(x), disc(rec.detach())
                        d_loss = discriminator_loss(cfg.loss.disc_loss, logits_real, logits_fake)
                        if cfg.loss.lecam_weight > 0:
                            d_loss = d_loss + cfg.loss.lecam_weight * lecam_penalty(raw_disc, logits_real, logits_fake, cfg.loss.lecam_decay)
                    optimizer_step(d_loss, dopt, disc.parameters(), None, acc, skip=guard.found)
            step += 1
            steps_done += 1
            bar.update(1)
            guard.after_step(step)  # agreed stop flags; at settle points the bad-step tally

            # -------------------------------------------------------- metrics (on the device until logged)
            with torch.no_grad():
                epoch_counts += torch.bincount(q.indices.flatten(), minlength=k).float()
                stats = {"rec_loss": rec_loss, "commitment": q.commitment_loss, "perplexity": q.perplexity,
                         "psnr": psnr(rec.float(), x).mean()}
                if disc_active:
                    stats.update(g_loss=g_loss, d_loss=d_loss, d_weight=d_weight, disc_ramp=ramp,
                                 logits_real=logits_real.float().mean(), logits_fake=logits_fake.float().mean())
                window.add(loss, **stats)
            if step % sampler.steps_per_epoch == 0:
                usage = codebook_stats(acc.reduce(epoch_counts, "sum").cpu())
                logger.scalars(step, {"epoch/codebook_usage": usage["codebook_usage"], "epoch/perplexity": usage["perplexity"]})
                epoch_counts.zero_()
            if due(step, tc.log_every, tc):
                avg = {f"train/{key}": v for key, v in window.means(acc).items()}
                live = (epoch_counts > 0).float().mean().item() * 100
                avg.update({"train/codebook_usage_epoch_so_far": live, "train/restarts": float(raw.quantizer.restarts),
                            "train/lr": opt.param_groups[0]["lr"]})
                if getattr(raw.quantizer, "growing", False):  # usage is counted over all K rows, of which these are in use
                    avg["train/active_codes"] = float(raw.quantizer.num_active())
                logger.scalars(step, avg)
                bar.set_postfix(loss=f"{avg['train/loss']:.4f}", psnr=f"{avg['train/psnr']:.2f}", codes=f"{live:.0f}%")
            if is_main and due(step, tc.image_every, tc):
                raw.eval()
                with torch.no_grad():
                    r, _, _ = raw(fixed_batch.to(device))
                save_png(make_grid(torch.cat([fixed_batch, r.float().cpu()]), nrow=len(fixed_batch)), run_dir / "images" / f"reconstructions_{step:08d}.png")
            if step % tc.checkpoint_every == 0 and step < tc.max_steps:
                last_ckpt = save_checkpoint(step) or last_ckpt
            stop_if_signalled(guard, step, save_checkpoint, bar, logger, run_dir)
    bar.close()
    batches.close()  # stops the loader's worker processes
    clock.stop()
    steps_done = guard.trained_steps(steps_done)
    save_checkpoint(step)
    logger.loss_curves(["train/loss", "train/rec_loss", "train/psnr", "train/perplexity", "train/codebook_usage_epoch_so_far"])

    # ---------------------------------------------------------------- export + final metrics
    metrics: dict = {}
    if is_main:
        raw.quantizer.sync_codebook()  # the codes of the last optimizer step (simvq's E = C W) in the VQModel
        vq = raw.vqmodel.float().eval()
        scaling = measure_scaling_factor(vq, datasets.train, tc.eval_batch_size, device, tc.scaling_max_images, progress=tc.progress)
        vq.register_to_config(scaling_factor=scaling)
        result = evaluate_reconstruction(vq, datasets.holdout, tc.eval_batch_size, device, tc.eval_max_images, progress=tc.progress)
        with AtomicDir(run_dir / "vqvae") as tmp:
            vq.save_pretrained(tmp, safe_serialization=True)
        n_params = sum(p.numel() for p in raw.parameters())
        metrics = run_metrics(step, steps_done, clock, tc, acc, n_params, window.last_mean, scaling_factor=scaling,
                              holdout=result, train_images=len(datasets.train), skipped_files=len(datasets.skipped),
                              restarts=int(raw.quantizer.restarts),
                              **({"active_codes": raw.quantizer.num_active()} if getattr(raw.quantizer, "growing", False) else {}))
        atomic_write_json(run_dir / "metrics.json", metrics)
        logger.scalars(step, {f"eval/{key}": v for key, v in result.items() if isinstance(v, (int, float))})
        log(
            f"done: {step} steps; held-out ({result['images']} images) PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}, "
            f"codebook usage {result['codebook_usage']:.1f}% ({result['dead_codes']} dead), perplexity {result['perplexity']:.1f}; "
            f"scaling_factor {scaling:.4f}; model in {run_dir / 'vqvae'}"
        )
    logger.close()
    acc.wait_for_everyone()
    acc.end_training()
    return metrics
