"""``vqldm train-diffusion``: one flat training loop for the latent UNet (stage 2).

build (autoencoder, data geometry, latent cache, UNet, EMA, optimizer) -> resume -> loop (cached
latents, noise + timesteps, label dropout, forward, loss, NaN guard, backward, clip, step, EMA, log,
sample grids, checkpoints) -> export ``OUT/pipeline`` with the EMA UNet -> ``OUT/metrics.json``.

Reproducibility: the batch order comes from :class:`BatchSampler` (a function of seed and step), and
the noise, timesteps and label-dropout coins of step ``s`` on process ``r`` come from a CPU generator
seeded with a hash of (seed, s, r). A resumed run therefore draws exactly what an uninterrupted run
would, on every process, with no generator state to carry between processes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..latents.setup import prepare_latent_stage
from ..plumbing.checkpoint import atomic_write_json, latest_checkpoint, weights_sha256
from ..plumbing.config import to_dict
from ..plumbing.ema import EMA, ema_decay_at
from ..plumbing.images import make_grid, save_png
from ..plumbing.runs import RunLogger, progress_bar
from ..text.config import DIFFUSERS_TEXT_LENGTH
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
from .conditioning import training_conditioning
from .config import DiffusionRunConfig
from .export import export_pipeline_folder, fold_latent_scale
from .model import SuperResolutionDenoiser, TextDenoiser, build_text_unet, build_unet, check_latent_shape
from .objective import (
    diffusion_loss,
    make_sampling_scheduler,
    make_train_scheduler,
    min_snr_weights,
    sample_noise_and_timesteps,
    training_target,
)
from .sampling import generate_samples


# ----------------------------------------------------------------------------- training
def train_diffusion(
    cfg: DiffusionRunConfig,
    out: str | Path,
    autoencoder: str | Path,
    data: str | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    init: str | None = None,
) -> dict:
    """Train the latent UNet, export ``out/pipeline`` (EMA weights) and return the final metrics
    (also written to ``out/metrics.json``; empty on non-main processes). ``init``: start from a published
    UNet2DModel (a UNet, pipeline or run folder, or a Hub repo id; ``latents.setup.init_unet``)."""
    tc, oc = cfg.train, cfg.objective
    text = None  # the TextEncoder of a text-to-image run

    def build_model(vqvae, latent, n_classes):
        nonlocal text
        if cfg.model.superresolution:  # the UNet also takes the image at the latent grid's size
            return SuperResolutionDenoiser(build_unet(cfg.model, latent, 0, image_channels=int(vqvae.config.in_channels)))
        if not cfg.text.enabled:
            return build_unet(cfg.model, latent, n_classes)
        from ..text.encoders import text_encoder_for

        text = text_encoder_for(cfg.text)  # seeded: a scratch encoder starts the same on every process
        unet = build_text_unet(cfg.model, latent, text.hidden_size)
        return TextDenoiser(unet, text.model if text.trained else None)

    if cfg.text.enabled:
        cfg.data.captions = True  # every training image needs its caption (checked as the data loads)
    if cfg.model.superresolution:
        cfg.cache.low_res = True  # the cache keeps each image downsampled to the latent grid
    stage, unet = prepare_latent_stage(cfg, out, autoencoder, data, max_steps, resume, codes=False, build_model=build_model,
                                      init=init)
    if init is not None and cfg.model.superresolution:  # a published super-resolution UNet (latents + image in)
        unet = SuperResolutionDenoiser(unet)
    acc, log, progress, vqvae, run_dir, cache = stage.accelerator, stage.log, stage.progress, stage.vqvae, stage.run_dir, stage.cache
    is_main, device, latent, num_classes = stage.is_main, stage.device, stage.latent, stage.num_classes
    data_cfg, sampler = stage.data, stage.sampler

    # ---------------------------------------------------------------- EMA, optimizer, schedules
    unet = training_layout(unet, tc, device)
    ema = EMA(unet, tc.ema_decay, tc.ema_warmup)
    opt = adamw(unet.parameters(), tc, device)
    noise_scheduler = make_train_scheduler(oc)
    sample_scheduler = make_sampling_scheduler(oc)
    if text is not None and not text.trained:
        text.model.to(device)
    superres = cfg.model.superresolution
    conditioning = training_conditioning(cache.train, num_classes, text, superres, oc.label_dropout, device,
                                         autocast=acc.autocast, log=log)
    sample_prompts = _sample_prompts(cache, tc.num_sample_images) if text is not None else None

    # ---------------------------------------------------------------- resume
    resumed = resume_training(run_dir, resume, {"unet": unet}, {"optimizer": opt}, log=log)
    if resumed.checkpoint is not None:
        check_latent_shape(vqvae.config, resumed.state.get("unet_config", dict(unet.config)), data_cfg.image_size)
        resumed.restore(lambda: ema.load_state_dict(resumed.files["ema"], int(resumed.state["ema_updates"])))
    step = resumed.step

    unet, opt = acc.prepare(unet, opt)
    raw = acc.unwrap_model(unet)
    ema.to(device)
    n_params = sum(p.numel() for p in raw.parameters())
    if text is not None and text.max_length != DIFFUSERS_TEXT_LENGTH:
        log(f"text: text.max_length is {text.max_length}; diffusers' LDMTextToImagePipeline pads prompts to "
            f"{DIFFUSERS_TEXT_LENGTH} tokens, so it will sample this model differently from vqldm's pipeline "
            f"(use {DIFFUSERS_TEXT_LENGTH} for the same images in both)")
    conditioned_on = f"text ({_describe_text(text)})" if text is not None else f"{num_classes or 'no'} classes"
    log(f"train-diffusion: {n_params / 1e6:.2f}M-parameter {'denoiser' if text is not None else 'UNet'} on {tuple(latent)} latents, "
        f"{len(cache.train)} training items, {conditioned_on}, {acc.num_processes} process(es), global batch {tc.batch_size * acc.num_processes}")

    def save_checkpoint(at_step: int) -> Path | None:
        acc.wait_for_everyone()
        if not is_main:
            return None
        return save_training_state(
            run_dir, at_step, clock, tc.keep_checkpoints, modules={"unet": raw}, optimizers={"optimizer": opt},
            tensors={"ema": ema.state_dict()},
            state={"ema_updates": ema.num_updates, "config": to_dict(cfg), "unet_config": dict(raw.config), "cache_key": cache.key,
                   "init": init},
        )

    def sample_grid(at_step: int) -> None:
        path = run_dir / "images" / f"samples_{at_step:08d}.png"
        if superres:  # the first held-out images: their low-resolution inputs, then the model's upscales
            n = min(tc.num_sample_images, len(cache.holdout)) or tc.num_sample_images
            split = cache.holdout if len(cache.holdout) else cache.train
            low = to_device(split.low_res_batch(torch.arange(n)), device)
            images = generate_samples(ema.model, vqvae, sample_scheduler, n, 0, 1.0, tc.sample_steps, tc.seed, device, low_res=low)
            up = torch.nn.functional.interpolate(low.float().cpu(), size=images.shape[-2:], mode="nearest")
            images = torch.cat([up, images])
        elif text is None:
            images = generate_samples(ema.model, vqvae, sample_scheduler, tc.num_sample_images, num_classes,
                                      tc.sample_guidance, tc.sample_steps, tc.seed, device)
        else:  # the first held-out captions, their prompts written beside the grid
            encoder = ema.model.text_encoder if text.trained else text.model
            with torch.no_grad():
                context = encoder(to_device(text.tokenize(sample_prompts), device))[0]
                null_context = encoder(to_device(text.null_ids(), device))[0]
            images = generate_samples(ema.model.unet, vqvae, sample_scheduler, len(sample_prompts), 0, tc.sample_guidance,
                                      tc.sample_steps, tc.seed, device, context=context, null_context=null_context)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".txt").write_text("".join(p + "\n" for p in sample_prompts), encoding="utf-8")
        save_png(make_grid(images, nrow=min(num_classes, tc.num_sample_images) if num_classes else None), path)

    # ---------------------------------------------------------------- loop
    logger = RunLogger(run_dir, is_main)
    last_ckpt = latest_checkpoint(run_dir)
    batches = sampler.batches(step)
    window, steps_done = LossWindow(), 0
    clock = TrainClock(resumed.seconds)
    bar = progress_bar(tc.max_steps, step, "train-diffusion", enabled=progress)
    with StopSignals() as signals:
        guard = StepGuard(tc, signals, clock, acc, log=log)  # skip/stop decisions agreed by every process
        while keep_training(tc, step, guard):
            items = torch.as_tensor(next(batches))
            x0, labels = cache.train.batch(items)  # B x C x h x w scaled latents, B labels
            x0 = to_device(x0, device)
            g = step_generator(tc.seed, step, acc.process_index)
            noise, timesteps = sample_noise_and_timesteps(x0, oc.num_train_timesteps, g)
            condition = conditioning.inputs(items, labels, g)  # label/caption dropout for guidance; the low-res image
            set_learning_rate(opt, learning_rate(tc, step))  # warm-up, then constant (LDM) or cosine
            unet.train()
            with acc.accumulate(unet):
                z_t = noise_scheduler.add_noise(x0, noise, timesteps)  # α_t·x0 + σ_t·ε
                with acc.autocast():
                    prediction = unet(z_t, timesteps, **condition).sample
                target = training_target(oc.prediction_type, x0, noise, timesteps, noise_scheduler)
                weights = min_snr_weights(noise_scheduler, timesteps, oc.prediction_type, oc.min_snr_gamma)
                loss = diffusion_loss(prediction, target, weights)
                guard.check(loss, step, last_ckpt)  # a bad step is skipped on the device (no host read)
                optimizer_step(loss, opt, unet.parameters(), tc.grad_clip, acc, guard=guard)
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
                logger.scalars(step, {"train/loss": mean_loss, "train/lr": opt.param_groups[0]["lr"],
                                      "train/ema_decay": ema_decay_at(ema.num_updates, ema.decay, ema.warmup)})
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
    done = acc.gather(torch.tensor([steps_done], device=device)).cpu().tolist()
    metrics: dict = {}
    if is_main:
        metrics = run_metrics(step, steps_done, clock, tc, acc, n_params, window.last_mean, steps_per_process=done,
                              latent_shape=list(latent), train_items=len(cache.train), num_classes=num_classes,
                              latent_cache={"folder": str(cache.folder), "key": cache.key, "built": cache.built, "seconds": cache.seconds})
        denoiser = ema.model.cpu()
        exported_vqvae = vqvae.cpu()
        text_parts = {}
        if superres:  # diffusers' super-resolution pipeline decodes with no scaling factor: fold it into the vqvae
            denoiser, exported_vqvae = denoiser.unet, fold_latent_scale(exported_vqvae)
        if text is not None:  # the text encoder (trained: its EMA copy) and tokenizer become pipeline components
            encoder = denoiser.text_encoder if text.trained else text.model.cpu()
            denoiser = denoiser.unet
            text_parts = {"text_encoder": encoder, "tokenizer": text.tokenizer}
        export_pipeline_folder(
            exported_vqvae, denoiser, sample_scheduler, run_dir / "pipeline",
            extra={"class_names": stage.class_names, "num_classes": num_classes, "image_size": data_cfg.image_size,
                   "vqvae_weights_sha256": weights_sha256(exported_vqvae),
                   "step": step, "prediction_type": oc.prediction_type, "training_config": to_dict(cfg),
                   **({"text_encoder_source": text.source, "text_max_length": text.max_length,
                      # a prompt without --guidance samples as the training grids did (the preset's scale)
                      "default_guidance": tc.sample_guidance} if text is not None else {})},
            **text_parts,
        )
        atomic_write_json(run_dir / "metrics.json", metrics)
        log(f"done: {step} steps, loss {window.last_mean:.4f}, {metrics['images_per_s'] or 0:.0f} images/s on {acc.num_processes} process(es); "
            f"pipeline in {run_dir / 'pipeline'}")
    logger.close()
    acc.wait_for_everyone()
    acc.end_training()
    return metrics


def _sample_prompts(cache, n: int) -> list[str]:
    """The captions of the periodic sample grids: the first ``n`` held-out ones (training ones if too few)."""
    prompts = list(cache.holdout.captions or [])[:n] if cache.holdout.captions is not None else []
    if len(prompts) < n:
        prompts += list(cache.train.captions)[: n - len(prompts)]
    return prompts


def _describe_text(text) -> str:
    kind = "byte-level T5 encoder trained from scratch" if text.trained else f"frozen {type(text.model).__name__} {text.source!r}"
    n = sum(p.numel() for p in text.model.parameters())
    return f"{kind}, {n / 1e6:.2f}M parameters, {text.max_length} tokens"
