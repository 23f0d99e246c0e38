"""Benchmark 1: latent (vqldm) vs pixel-space diffusion at equal training time.

A pixel-space DDPM — a diffusers ``UNet2DModel`` with about as many parameters as vqldm's latent UNet — is
trained on the same data, at the same image size, for the same wall-clock training time (same torch thread
count) as vqldm's autoencoder + latent diffusion together. Both then sample the same number of images with
the same scheduler (DDIM), step count, class labels and guidance, both through the frozen CPU UNet of
``pipelines/fast.py``; the script reports FID / KID in domain features against the same held-out real
images, and seconds per generated image.

    python benchmarks/bench_latent_vs_pixel.py --model RUN/pipeline \\
        --autoencoder-run AE_RUN --diffusion-run DIFFUSION_RUN --num-samples 1000 --steps 50
    python benchmarks/bench_latent_vs_pixel.py --seconds 60 --num-samples 200 --steps 20  # smoke run

Training time: ``train_seconds`` from each run's ``metrics.json`` (plus the latent-cache build time of
the diffusion run), or ``--seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py

from common import run_main  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from vqldm.plumbing.errors import UserError  # noqa: E402

# (block_out_channels, layers_per_block) candidates for the pixel UNet; the one closest in parameter
# count to vqldm's latent UNet is used.
PIXEL_CANDIDATES = [((c, 2 * c, 2 * c), layers) for c in (16, 24, 32, 48, 64, 96, 128) for layers in (1, 2)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="vqldm pipeline folder (default: the shipped model)")
    p.add_argument("--autoencoder-run", default=None, help="autoencoder run folder (its metrics.json gives train_seconds)")
    p.add_argument("--diffusion-run", default=None, help="diffusion run folder (its metrics.json gives train_seconds)")
    p.add_argument("--seconds", type=float, default=None, help="pixel training budget in seconds (instead of the run folders)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--features", default="fashion-mnist-detail", help="feature network for FID (a train-features folder or a shipped one)")
    p.add_argument("--num-samples", type=int, default=1000, help="generated images per model (and real images)")
    p.add_argument("--steps", type=int, default=50, help="DDIM sampling steps for both models")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance for both (class-conditional models)")
    p.add_argument("--batch-size", type=int, default=64, help="pixel training batch size")
    p.add_argument("--sample-batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=5e-4, help="pixel training learning rate")
    p.add_argument("--pixel-params", type=int, default=None, help="target pixel UNet size (default: vqldm's latent UNet)")
    p.add_argument("--pixel-only", action="store_true", help="train and measure only the pixel model (no vqldm pipeline)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice); stated in the output")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_latent_vs_pixel", help="folder for the JSON result and the pixel model")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- training time of a vqldm run
def run_train_seconds(run: str) -> float:
    path = Path(run) / "metrics.json"
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path} ({err}); pass a finished run folder or --seconds") from None
    if not isinstance(m.get("train_seconds"), (int, float)):
        raise UserError(f"{path} has no train_seconds; pass --seconds with the training time instead")
    seconds = float(m["train_seconds"])
    cache = m.get("latent_cache") or {}
    if cache.get("built") and isinstance(cache.get("seconds"), (int, float)):
        seconds += float(cache["seconds"])  # encoding the dataset once is part of latent diffusion's cost
    return seconds


# ----------------------------------------------------------------------------- pixel model
def build_pixel_unet(image_size: int, channels: int, num_classes: int | None, block_out_channels, layers: int):
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=image_size, in_channels=channels, out_channels=channels,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),  # attention only at the lowest resolution
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8,
        num_class_embeds=num_classes + 1 if num_classes else None,  # + the null class for guidance
    )


def pick_pixel_unet(target_params: int, image_size: int, channels: int, num_classes: int | None):
    best = None
    for chans, layers in PIXEL_CANDIDATES:
        unet = build_pixel_unet(image_size, channels, num_classes, chans, layers)
        n = sum(p.numel() for p in unet.parameters())
        if best is None or abs(n - target_params) < abs(best[1] - target_params):
            best = (unet, n)
    return best


def train_pixel(unet, data, seconds: float, batch_size: int, lr: float, num_classes: int | None, seed: int, progress: bool):
    """DDPM, ε-prediction, linear betas (Ho et al. 2020), AdamW; stops when ``seconds`` of training have passed.
    Labels are dropped to the null class with p = 0.1 for classifier-free guidance (Ho & Salimans 2022)."""
    from diffusers import DDPMScheduler

    from vqldm.data.loading import BatchSampler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    batches = BatchSampler(len(data), batch_size, seed).batches()
    unet.train()
    steps, start = 0, time.perf_counter()
    bar = tqdm(desc="pixel DDPM training", unit="step", disable=not progress, total=None)
    while time.perf_counter() - start < seconds:
        x, y = data.batch(next(batches))
        noise = torch.randn(x.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x.shape[0],), generator=g)
        labels = None
        if num_classes:
            drop = torch.rand(x.shape[0], generator=g) < 0.1
            labels = torch.where(drop, torch.full_like(y, num_classes), y)
        pred = unet(scheduler.add_noise(x, noise, t), t, class_labels=labels).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        steps += 1
        bar.update(1)
        if steps % 20 == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    bar.close()
    unet.eval()
    return scheduler, steps, time.perf_counter() - start


@torch.inference_mode()
def sample_pixel(model, train_scheduler, num_images: int, batch_size: int, steps: int, guidance: float, seed: int,
                 num_classes: int | None, progress: bool):
    """DDIM samples in [-1, 1], their labels (balanced), seconds per image — same protocol as vqldm's.
    ``model`` is the pixel UNet behind ``pipelines.fast.FrozenUNet`` (the CPU path vqldm samples with here)."""
    from diffusers import DDIMScheduler

    from vqldm.diffusion.sampling import denoise

    unet = model.unet
    scheduler = DDIMScheduler.from_config(train_scheduler.config)
    labels = torch.arange(num_images) % num_classes if num_classes else None
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    out, start = [], time.perf_counter()
    for b, s in enumerate(tqdm(range(0, num_images, batch_size), desc="pixel sampling", disable=not progress, leave=False)):
        n = min(batch_size, num_images - s)
        g = torch.Generator().manual_seed(seed + b)
        x = torch.randn((n, *shape), generator=g)
        scheduler.set_timesteps(steps)
        lab = labels[s : s + n] if labels is not None else None
        x = denoise(model, scheduler, x, scheduler.timesteps, class_labels=lab, guidance_scale=guidance if lab is not None else 1.0,
                    null_class=num_classes, generator=g)
        out.append(x.clamp(-1, 1))
    return torch.cat(out), labels, (time.perf_counter() - start) / num_images


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    from vqldm.evaluation.generation import (
        format_kid,
        generate_images,
        pipeline_data_fit,
        warm_up,
    )
    from vqldm.pipelines.sampler import load_sampler
    from vqldm.evaluation.metrics import distribution_metrics
    from vqldm.evaluation.reference import load_reference_data, real_images
    from vqldm.pipelines.fast import FrozenUNet
    from vqldm.evaluation.features import load_feature_extractor

    if args.seconds is None and not (args.autoencoder_run and args.diffusion_run):
        raise UserError("give the vqldm training time: --autoencoder-run and --diffusion-run (their metrics.json), or --seconds")
    if args.seconds is not None:
        budget, budget_source = float(args.seconds), "--seconds"
    else:
        ae_s, dm_s = run_train_seconds(args.autoencoder_run), run_train_seconds(args.diffusion_run)
        budget, budget_source = ae_s + dm_s, f"autoencoder {ae_s:.0f} s + latent diffusion {dm_s:.0f} s (metrics.json)"
    extractor = load_feature_extractor(args.features)

    pipe = None
    if not args.pixel_only:
        pipe = load_sampler(args.model, freeze_unet=True)
        pipe.set_scheduler("ddim")
        size, channels = int(pipe.vqvae.config.sample_size), int(pipe.vqvae.config.in_channels)
        num_classes = pipe.num_classes or None
        fit = pipeline_data_fit(pipe)
        latent_params = sum(p.numel() for p in pipe.unet.parameters())
        vq_params = sum(p.numel() for p in pipe.vqvae.parameters())
    else:
        size, channels, num_classes, fit = 32, 1, 10, "pad"
        latent_params, vq_params = None, None
    target = args.pixel_params or latent_params or 2_000_000

    ds = load_reference_data(args.data, size, channels, fit, progress)
    if pipe is None:  # pixel only: class-conditional when the data has labels
        num_classes = ds.train.num_classes if ds.train.num_classes >= 2 and bool((ds.train.labels >= 0).all()) else None
    real, _ = real_images(ds.holdout, args.num_samples, args.seed)
    real_f = extractor(real, progress, "features (real)")

    rows = []
    if pipe is not None:
        warm_up(pipe, args.sample_batch_size, args.guidance, num_classes)
        fake, _, spi = generate_images(pipe, args.num_samples, args.sample_batch_size, args.steps, args.guidance, args.seed, num_classes, progress, "vqldm sampling")
        m = distribution_metrics(real_f, extractor(fake, progress, "features"), seed=args.seed)
        rows.append({"model": "vqldm (latent)", "params": latent_params + vq_params, "unet_params": latent_params,
                     "train_seconds": budget, "seconds_per_image": spi, **m})

    torch.manual_seed(args.seed)
    unet, n_pixel = pick_pixel_unet(target, size, channels, num_classes)
    train_sched, steps, spent = train_pixel(unet, ds.train, budget, args.batch_size, args.lr, num_classes, args.seed, progress)
    warm = min(args.sample_batch_size, args.num_samples)  # warm-up at the timed batch shape (vqldm gets the same)
    frozen = FrozenUNet(unet)  # one copy for both calls: the warm-up builds the graph the timed run uses
    sample_pixel(frozen, train_sched, warm, args.sample_batch_size, 2, args.guidance, args.seed, num_classes, False)
    fake, _, spi = sample_pixel(frozen, train_sched, args.num_samples, args.sample_batch_size, args.steps, args.guidance, args.seed, num_classes, progress)
    m = distribution_metrics(real_f, extractor(fake, progress, "features"), seed=args.seed)
    rows.append({"model": "pixel DDPM", "params": n_pixel, "unet_params": n_pixel, "train_seconds": spent, "train_steps": steps,
                 "seconds_per_image": spi, **m})

    out = Path(args.out)
    from vqldm.plumbing.checkpoint import AtomicDir, atomic_write_json

    with AtomicDir(out / "pixel_unet") as tmp:
        unet.save_pretrained(tmp, safe_serialization=True)
    result = {
        "benchmark": "latent_vs_pixel", "data": ds.source, "image_size": size, "num_samples": args.num_samples,
        "sampler": f"DDIM {args.steps} steps", "guidance": args.guidance if num_classes else None,
        "features": extractor.name, "budget_seconds": budget, "budget_source": budget_source,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows,
    }
    if len(rows) == 2:
        result["cost_ratio_pixel_over_vqldm"] = rows[1]["seconds_per_image"] / rows[0]["seconds_per_image"]
    atomic_write_json(out / "result.json", result)

    print(f"latent vs pixel diffusion on {ds.source} {size}x{size}; training budget {budget:.0f} s ({budget_source}); "
          f"DDIM {args.steps} steps; {torch.get_num_threads()} threads; FID/KID with {extractor.name} features, "
          f"{args.num_samples} generated vs {real_f.shape[0]} held-out real images")
    print(f"{'model':<16} {'params (UNet)':>22} {'train s':>8} {'FID':>9} {'KID (mean ± std)':>20} {'s/image':>9}")
    for r in rows:
        params = f"{r['params']:,} ({r['unet_params']:,})"
        print(f"{r['model']:<16} {params:>22} {r['train_seconds']:>8.0f} {r['fid']:>9.3f} {format_kid(r):>20} {r['seconds_per_image']:>9.4f}")
    if "cost_ratio_pixel_over_vqldm" in result:
        print(f"cost ratio (pixel s/image ÷ vqldm s/image): {result['cost_ratio_pixel_over_vqldm']:.2f}x")
    print(f"result: {out / 'result.json'}")
    return 0


if __name__ == "__main__":
    run_main(main)
