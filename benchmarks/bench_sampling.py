"""Sampling speed: vqldm's pipeline vs diffusers' LDMPipeline on the same weights, in one process.

    python benchmarks/bench_sampling.py                       # CompVis-shaped 64x64 f=4 model, random weights
    python benchmarks/bench_sampling.py --model DIR --steps 50 --batch 4 --repeats 3
    python benchmarks/bench_sampling.py --quality --model DIR --data fashion-mnist   # fewer steps at equal FID

Speed mode (issue 5, acceptance 3): one pipeline, the same scheduler / steps / batch / seed for
``diffusers.LDMPipeline`` and for each vqldm variant; checks the images agree (max |diff| <= 1e-3); prints
seconds per image (median of ``--repeats``, runs interleaved so background load hits both alike), the
ratio, the thread count, and the GFLOP/s of the UNet and the VQ decoder (FLOPs from
``torch.utils.flop_counter.FlopCounterMode``) against a measured large fp32 matmul. Variants: the plain
pipeline, channels-last weights, and the frozen TorchScript UNet (``pipelines/fast.py``; its one-time
build on the first call is printed separately, the timed runs reuse it as any long-lived pipeline would).

The default model has the CompVis ldm-celebahq-256 shapes (vqvae: widths 128/256/512, 2 layers per block,
3 latent channels, 8192 codes; UNet: widths 224/448/672/896, attention on the 3 lower levels, head dim 32)
at a 64x64 image size, so f = 4 gives 16x16 latents (~1.1 GFLOP per UNet step, ~10 GFLOP per decode).

Quality mode: vqldm's default sampler (vqldm.json default_scheduler/default_steps/default_scheduler_options,
else dpm/20) with the frozen UNet vs diffusers' default (DDIM, 50 steps, eager UNet) on ``--model`` (default:
the shipped model): seconds per image (including the frozen UNet's build) and FID against ``--data``
held-out images in the domain feature space of ``pipelines.features`` (same sample count and seeds).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py

import torch  # noqa: E402


# ----------------------------------------------------------------------------- model
def compvis_shaped_parts(image_size: int = 64, unet_width: int = 64, vq_width: int = 64, seed: int = 0):
    """Random-weight vqvae / UNet / DDIM with the CompVis ldm-celebahq-256 structure at ``image_size``.

    Widths scale as in CompVis (UNet 1:2:3:4 of ``unet_width``, vqvae 1:2:4 of ``vq_width``). The real
    checkpoint has unet_width 224 / vq_width 128 (~12 GFLOP per UNet step, ~40 per decode at 64x64); the
    default 64 / 64 gives the issue's ~1.1 GFLOP per step and ~10 GFLOP per decode, and runs in minutes.
    """
    from diffusers import DDIMScheduler, UNet2DModel, VQModel

    torch.manual_seed(seed)
    vqvae = VQModel(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(vq_width, 2 * vq_width, 4 * vq_width), layers_per_block=2, latent_channels=3, num_vq_embeddings=8192,
        sample_size=image_size, scaling_factor=1.0,
    ).eval()
    vqvae.quantize.embedding.weight.data.normal_()  # spread codes so quantization is not degenerate
    unet = UNet2DModel(
        sample_size=image_size // 4, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=tuple(k * unet_width for k in (1, 2, 3, 4)), attention_head_dim=32,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ).eval()
    scheduler = DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="linear", num_train_timesteps=1000,
                              clip_sample=False, set_alpha_to_one=False)
    return vqvae, unet, scheduler


# ----------------------------------------------------------------------------- measurements
def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN primitive caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def component_rates(vqvae, unet, batch: int, repeats: int) -> dict:
    """GFLOP per image and GFLOP/s for one UNet step and one decode at ``batch``."""
    c, s = unet.config.in_channels, unet.config.sample_size
    x = torch.randn(batch, c, s, s)
    t = torch.tensor(500)
    with torch.inference_mode():
        unet_call = lambda: unet(x, t)  # noqa: E731
        dec_call = lambda: vqvae.decode(x)  # noqa: E731
        unet_flops, dec_flops = count_flops(unet_call), count_flops(dec_call)
        unet_s, dec_s = median_seconds(unet_call, repeats), median_seconds(dec_call, repeats)
    return {
        "unet_gflop_per_image_step": unet_flops / batch / 1e9, "unet_gflops": unet_flops / unet_s / 1e9,
        "decoder_gflop_per_image": dec_flops / batch / 1e9, "decoder_gflops": dec_flops / dec_s / 1e9,
        "unet_s_per_step": unet_s, "decoder_s": dec_s,
    }


# ----------------------------------------------------------------------------- speed mode
def speed(args) -> int:
    import numpy as np
    from diffusers import LDMPipeline

    from vqldm.pipelines.pipeline import VQLatentDiffusionPipeline, make_scheduler

    if args.model:
        src = VQLatentDiffusionPipeline.from_pretrained(args.model)
        vqvae, unet, scheduler = src.vqvae, src.unet, src.scheduler
    else:
        vqvae, unet, scheduler = compvis_shaped_parts(args.image_size, args.unet_width, args.vq_width)
    scheduler = make_scheduler(args.scheduler, scheduler.config)
    if args.model and src.num_classes:
        print("note: class-conditional model; LDMPipeline passes no labels, so both run with the UNet's default (no class)")

    ldm = LDMPipeline(vqvae=vqvae, unet=unet, scheduler=copy.deepcopy(scheduler))
    variants = {"vqldm": VQLatentDiffusionPipeline(vqvae, unet, copy.deepcopy(scheduler))}
    if not args.no_channels_last:
        cl = VQLatentDiffusionPipeline(copy.deepcopy(vqvae), copy.deepcopy(unet), copy.deepcopy(scheduler))
        variants["vqldm+channels_last"] = cl.use_channels_last()
    if not args.no_frozen_unet:
        variants["vqldm+frozen_unet"] = VQLatentDiffusionPipeline(vqvae, unet, copy.deepcopy(scheduler)).use_frozen_unet()
    for p in [ldm, *variants.values()]:
        p.set_progress_bar_config(disable=True)

    def run_ldm():
        return ldm(batch_size=args.batch, generator=torch.Generator().manual_seed(args.seed),
                   num_inference_steps=args.steps, output_type="np").images

    def runner(pipe, **extra):
        def run():
            return pipe(batch_size=args.batch, generator=torch.Generator().manual_seed(args.seed),
                        num_inference_steps=args.steps, output_type="np", **extra).images
        return run

    runs = {"diffusers LDMPipeline": run_ldm}
    for name, pipe in variants.items():
        runs[name] = runner(pipe)
    if args.decode_batch_size:
        best = variants.get("vqldm+channels_last", variants["vqldm"])
        runs[f"{list(variants)[-1]}+decode_batch_size={args.decode_batch_size}"] = runner(best, decode_batch_size=args.decode_batch_size)

    print(f"model: {'--model ' + args.model if args.model else f'CompVis-shaped {args.image_size}x{args.image_size} f=4, widths unet {args.unet_width} / vq {args.vq_width} (random weights)'}; "
          f"scheduler {args.scheduler}, {args.steps} steps, batch {args.batch}, seed {args.seed}")
    print(f"threads: {torch.get_num_threads()} (torch), cpu_count {os.cpu_count()}, torch {torch.__version__}")

    reference = run_ldm()  # also a warm-up
    outputs, first_call = {}, {}
    for name, fn in runs.items():
        if name != "diffusers LDMPipeline":
            t0 = time.perf_counter()
            outputs[name] = fn()
            first_call[name] = time.perf_counter() - t0
    ok = True
    for name, out in outputs.items():
        diff = float(np.abs(out - reference).max())
        ok &= diff <= 1e-3
        print(f"  images agree: {name} vs LDMPipeline max |diff| = {diff:.2e} {'OK' if diff <= 1e-3 else 'FAIL (> 1e-3)'}")

    times = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so background load hits every variant alike
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["diffusers LDMPipeline"]) / args.batch
    print(f"seconds per image (median of {args.repeats}):")
    for name, ts in times.items():
        per = statistics.median(ts) / args.batch
        print(f"  {name:<45s} {per:8.3f} s/image   ratio {per / base:5.3f}   (runs: {', '.join(f'{t:.2f}' for t in ts)} s)")
    for name in runs:
        if "frozen_unet" in name:
            once = first_call[name] - statistics.median(times[name])
            print(f"  one-time cost of {name}: {once:.2f} s on its first call (trace + freeze, once per batch shape)")

    peak = matmul_gflops()
    print(f"fp32 matmul 2048^3: {peak:.1f} GFLOP/s")
    for label, (vq, un) in {"contiguous (diffusers)": (vqvae, unet),
                            **({"channels_last": (variants["vqldm+channels_last"].vqvae, variants["vqldm+channels_last"].unet)}
                               if "vqldm+channels_last" in variants else {})}.items():
        r = component_rates(vq, un, args.batch, max(3, args.repeats))
        print(f"  {label}: UNet {r['unet_gflop_per_image_step']:.2f} GFLOP/image/step at {r['unet_gflops']:.1f} GFLOP/s "
              f"({r['unet_gflops'] / peak:.0%} of matmul); decoder {r['decoder_gflop_per_image']:.2f} GFLOP/image at "
              f"{r['decoder_gflops']:.1f} GFLOP/s ({r['decoder_gflops'] / peak:.0%})")
    if "vqldm+frozen_unet" in variants:
        from vqldm.pipelines.fast import FrozenUNet

        frozen = FrozenUNet(unet)
        x = torch.randn(args.batch, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
        t = torch.tensor(500)
        with torch.no_grad():
            flops = count_flops(lambda: unet(x, t))  # the eager graph's FLOPs: the same maths
            sec = median_seconds(lambda: frozen(x, t), max(3, args.repeats))
        print(f"  frozen UNet: {flops / args.batch / 1e9:.2f} GFLOP/image/step at {flops / sec / 1e9:.1f} GFLOP/s "
              f"({flops / sec / 1e9 / peak:.0%} of matmul)")
    return 0 if ok else 1


# ----------------------------------------------------------------------------- quality mode
def generate_images(pipe, n: int, batch: int, seed: int, steps: int, labels_for, guidance: float) -> tuple[torch.Tensor, float]:
    """n images in [-1, 1] and the seconds per image it took."""
    g = torch.Generator().manual_seed(seed)
    out, t0 = [], time.perf_counter()
    for lo in range(0, n, batch):
        hi = min(lo + batch, n)
        labels = labels_for(lo, hi)
        imgs = pipe(batch_size=hi - lo, class_labels=labels, guidance_scale=guidance if labels is not None else 1.0,
                    num_inference_steps=steps, generator=g, output_type="pt").images
        out.append(imgs * 2 - 1)
    return torch.cat(out), (time.perf_counter() - t0) / n


def fid_against(real: torch.Tensor, fake: torch.Tensor, features_name: str | None) -> float | None:
    """FID in the domain feature space."""
    from vqldm.pipelines.features import load_feature_extractor
    from vqldm.pipelines.metrics import fid_from_features

    extractor = load_feature_extractor(features_name)
    return fid_from_features(extractor(real), extractor(fake))


def quality(args) -> int:
    from vqldm.plumbing.data import DataConfig, load_datasets
    from vqldm.pipelines.pipeline import DEFAULT_STEPS, load_pipeline

    pipe = load_pipeline(args.model, device="cpu", channels_last=False)
    pipe.set_progress_bar_config(disable=True)
    default_sched = pipe.info.get("default_scheduler", "dpm")
    default_steps = int(pipe.info.get("default_steps", 20))
    size, channels = pipe.vqvae.config.sample_size, pipe.vqvae.config.in_channels
    data = load_datasets(args.data, DataConfig(image_size=size, channels=channels), progress=False)
    real = data.holdout.batch(torch.arange(min(args.samples, len(data.holdout))))[0]
    labels_for = (lambda lo, hi: [i % pipe.num_classes for i in range(lo, hi)]) if pipe.num_classes else (lambda lo, hi: None)

    print(f"quality: {args.model or 'shipped model'}; {args.samples} samples per setting (batch {args.batch}, seed {args.seed}, "
          f"guidance {args.guidance}) vs {real.shape[0]} held-out {args.data} images; domain-feature FID; "
          f"torch threads {torch.get_num_threads()}, cpu_count {os.cpu_count()}; {time.strftime('%Y-%m-%d')}")
    results = {}
    pipe.use_frozen_unet(False)
    generate_images(pipe, args.batch, args.batch, args.seed, 2, labels_for, args.guidance)  # untimed warm-up (oneDNN, allocator)
    # diffusers' default runs the eager UNet (as LDMPipeline does: same speed, see the speed mode);
    # vqldm's default adds the frozen UNet unless --no-frozen-unet; its one-time build is inside its time.
    for name, sched, steps in (("diffusers default", "ddim", DEFAULT_STEPS), ("vqldm default", default_sched, default_steps)):
        pipe.set_scheduler(sched)
        pipe.use_frozen_unet(name == "vqldm default" and not args.no_frozen_unet)
        fake, spi = generate_images(pipe, args.samples, args.batch, args.seed, steps, labels_for, args.guidance)
        fid = fid_against(real, fake, args.features)
        results[name] = (spi, fid)
        print(f"  {name:<18s} {sched}/{steps} steps: {spi:.3f} s/image, FID {fid if fid is None else f'{fid:.2f}'} "
              f"({args.samples} samples vs {real.shape[0]} held-out images)")
    (t0, f0), (t1, f1) = results["diffusers default"], results["vqldm default"]
    print(f"time ratio vqldm default / diffusers default: {t1 / t0:.3f}" + ("" if f0 is None else f"; FID {f1:.2f} vs {f0:.2f}"))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="pipeline folder (default: CompVis-shaped random weights)")
    p.add_argument("--image-size", type=int, default=64, help="image size of the CompVis-shaped model (f=4)")
    p.add_argument("--unet-width", type=int, default=64, help="UNet base width (CompVis celebahq: 224)")
    p.add_argument("--vq-width", type=int, default=64, help="vqvae base width (CompVis celebahq: 128)")
    p.add_argument("--scheduler", default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the acceptance number uses 2)")
    p.add_argument("--no-frozen-unet", action="store_true", help="skip the frozen TorchScript UNet variant")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--decode-batch-size", type=int, default=None, help="also time this decoder batch size")
    p.add_argument("--quality", action="store_true", help="default sampler vs DDIM-50 at equal FID (needs --model, --data)")
    p.add_argument("--data", default="fashion-mnist", help="real images for FID (quality mode)")
    p.add_argument("--samples", type=int, default=500, help="samples per setting for FID (quality mode)")
    p.add_argument("--guidance", type=float, default=1.0, help="guidance for class-conditional models (quality mode)")
    p.add_argument("--features", default=None, help="feature extractor for FID (default: the domain classifier)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    return quality(args) if args.quality else speed(args)


if __name__ == "__main__":
    sys.exit(main())
