"""Sampling speed: vqldm's pipeline vs diffusers' LDMPipeline on the same weights, in one process.

    python benchmarks/bench_sampling.py                       # CompVis-shaped 64x64 f=4 model, random weights
    python benchmarks/bench_sampling.py --model DIR --steps 50 --batch 4 --num-images 64 --repeats 3
    python benchmarks/bench_sampling.py --quality --model DIR --data fashion-mnist   # fewer steps at equal FID
    python benchmarks/bench_sampling.py --break-even --model DIR --batches 1,4,16  # per UNet call: eager vs frozen

Speed mode (issue 5, acceptance 3; issue 12): one job of ``--num-images`` images in batches of ``--batch``
(one generator consumed batch after batch, as ``vqldm generate`` does) with the same weights, scheduler,
steps and seed for ``diffusers.LDMPipeline`` and for vqldm as ``vqldm generate`` runs it: its default path
(``--unet-path auto``, which freezes the UNet when the job makes enough UNet calls; the frozen copy's
one-time build is inside every timed job, as in a fresh process) and ``--unet-path eager``. Checks the
images agree (max |diff| <= 1e-3); prints seconds per image (median of ``--repeats``, runs interleaved so
background load hits all alike, and in reverse order on every other repeat), the ratios, the CPU and thread count, the GFLOP/s of the UNet and the VQ
decoder (FLOPs from ``torch.utils.flop_counter.FlopCounterMode``) against a measured large fp32 matmul,
and the frozen UNet's build cost, saving per call and break-even (with and without packed convolutions).

Break-even mode: only that last measurement, one table row per batch size in ``--batches``: milliseconds per
UNet call of the eager UNet (channels-last weights, as ``vqldm generate`` loads it), the frozen copy and the
frozen copy without packed convolutions, each copy's one-time build and the UNet calls it takes to pay
that back. These rows set ``pipelines.fast.FROZEN_MIN_UNET_CALLS``.

The default model has the CompVis ldm-celebahq-256 shapes (vqvae: widths 128/256/512, 2 layers per block,
3 latent channels, 8192 codes; UNet: widths 224/448/672/896, attention on the 3 lower levels, head dim 32)
at a 64x64 image size, so f = 4 gives 16x16 latents (~1.1 GFLOP per UNet step, ~10 GFLOP per decode).

Quality mode: vqldm's default sampler (vqldm.json default_scheduler/default_steps/default_scheduler_options,
else dpm/20) on the UNet path ``--unet-path`` picks (default auto) vs diffusers' default (DDIM, 50 steps,
eager UNet) on ``--model`` (default: the shipped model): seconds per image (including a frozen UNet's build)
and FID against ``--data`` held-out images in the domain feature space of ``vqldm.evaluation.features`` (same
sample count and seeds).
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


def unet_call_costs(unet, batch: int, repeats: int) -> dict:
    """One UNet call at ``batch`` (null-class labels for a class model, as vqldm's unconditional samples):
    median seconds per call of the eager UNet as it is laid out, of the frozen copy (``FrozenUNet``, vqldm's
    default) and of the frozen copy without packed convolutions, interleaved call by call; and each frozen
    copy's one-time build (first call minus a steady one)."""
    from vqldm.diffusion.model import null_class, unet_latent_shape, unet_num_classes

    x = torch.randn(batch, *unet_latent_shape(unet.config))
    classes = unet_num_classes(unet.config)
    inputs = (x, torch.tensor(500)) + ((torch.full((batch,), null_class(classes)),) if classes else ())
    frozen = frozen_copies(unet)
    calls = {"eager": lambda: unet(*inputs), **{name: (lambda f=f: f(*inputs)) for name, f in frozen.items()}}
    builds = {}
    with torch.no_grad():
        unet(*inputs)  # warm-up (oneDNN primitive caches)
        for name in frozen:
            t0 = time.perf_counter()
            calls[name]()
            builds[name] = time.perf_counter() - t0
        times = {name: [] for name in calls}
        for r in range(repeats):
            for name, fn in (list(calls.items()) if r % 2 == 0 else list(calls.items())[::-1]):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {"inputs": inputs, "eager": med["eager"], **{name: (med[name], builds[name] - med[name]) for name in frozen}}


FROZEN_KINDS = ("frozen", "frozen, convs unpacked")


def frozen_copies(unet) -> dict:
    """vqldm's frozen UNet and the same without packed convolutions, by their FROZEN_KINDS names (unbuilt)."""
    from vqldm.pipelines.fast import FrozenUNet

    return dict(zip(FROZEN_KINDS, (FrozenUNet(unet), FrozenUNet(unet, pack_convolutions=False))))


def break_even_calls(row: dict, name: str) -> str:
    """UNet calls after which the frozen copy ``name`` has saved its build: "N" or "never"."""
    sec, build = row[name]
    saving = row["eager"] - sec
    return f"{build / saving:.0f}" if saving > 0 else "never"


def break_even_words(row: dict) -> str:
    """How each frozen copy's build compares with what it saves per call, in words."""
    return f"eager {row['eager'] * 1e3:.1f} ms per UNet call; " + "; ".join(
        f"{name}: {row[name][0] * 1e3:.1f} ms per UNet call, one-time build {row[name][1]:.2f} s per batch shape, "
        f"break-even {break_even_calls(row, name)} calls" for name in FROZEN_KINDS)


def break_even(args) -> int:
    """Per UNet call, eager vs frozen, at each of ``--batches``: the rows behind FROZEN_MIN_UNET_CALLS."""
    from common import cpu_name
    from vqldm.pipelines.fast import FROZEN_MIN_UNET_CALLS
    from vqldm.pipelines.pipeline import load_pipeline

    if args.model:
        unet = load_pipeline(args.model).unet  # as vqldm generate loads it: channels-last weights
        label = args.model
    else:
        unet = compvis_shaped_parts(args.image_size, args.unet_width, args.vq_width)[1].to(memory_format=torch.channels_last)
        label = f"CompVis-shaped {args.image_size} px"
    print(f"break-even of the frozen UNet: {label}; CPU: {cpu_name()}, cpu_count {os.cpu_count()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; medians of {args.repeats} interleaved calls; auto freezes from {FROZEN_MIN_UNET_CALLS} calls")
    print("| batch | threads | eager ms/call | frozen ms/call | build s | break-even calls | frozen, convs unpacked: ms/call | build s | break-even |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in args.batches:
        row = unet_call_costs(unet, batch, args.repeats)
        cells = [str(batch), str(torch.get_num_threads()), f"{row['eager'] * 1e3:.1f}"]
        for name in FROZEN_KINDS:
            cells += [f"{row[name][0] * 1e3:.1f}", f"{row[name][1]:.2f}", break_even_calls(row, name)]
        print("| " + " | ".join(cells) + " |", flush=True)
    return 0


# ----------------------------------------------------------------------------- speed mode
def sample_job(pipe, n: int, batch: int, steps: int, seed: int):
    """n images in batches of ``batch`` from one generator consumed batch after batch, as `vqldm generate` does;
    works for diffusers' LDMPipeline and for vqldm's pipeline alike. numpy, N x H x W x c in [0, 1]."""
    import numpy as np

    g = torch.Generator().manual_seed(seed)
    return np.concatenate([pipe(batch_size=min(batch, n - lo), generator=g, num_inference_steps=steps, output_type="np").images
                           for lo in range(0, n, batch)])


def speed(args) -> int:
    import numpy as np
    from diffusers import LDMPipeline

    from common import cpu_name
    from vqldm.pipelines.fast import FROZEN_MIN_UNET_CALLS
    from vqldm.pipelines.pipeline import VQLatentDiffusionPipeline, make_scheduler

    if args.model:
        src = VQLatentDiffusionPipeline.from_pretrained(args.model)
        vqvae, unet, scheduler = src.vqvae, src.unet, src.scheduler
    else:
        vqvae, unet, scheduler = compvis_shaped_parts(args.image_size, args.unet_width, args.vq_width)
    scheduler = make_scheduler(args.scheduler, scheduler.config)
    if args.model and src.num_classes:
        print("note: class-conditional model; LDMPipeline passes no labels, so both run with the UNet's default (no class)")

    # vqldm as `vqldm generate` runs it (load_pipeline: channels-last weights), on its own copy of the
    # weights so that LDMPipeline keeps diffusers' contiguous layout
    vq_cl, unet_cl = copy.deepcopy(vqvae), copy.deepcopy(unet)
    ldm = LDMPipeline(vqvae=vqvae, unet=unet, scheduler=copy.deepcopy(scheduler))
    eager = VQLatentDiffusionPipeline(vq_cl, unet_cl, copy.deepcopy(scheduler))
    auto = VQLatentDiffusionPipeline(vq_cl, unet_cl, copy.deepcopy(scheduler))
    if not args.no_channels_last:
        eager.use_channels_last()
    calls = -(-args.num_images // args.batch) * args.steps  # batches x steps, as generate counts them
    for p in (ldm, eager, auto):
        p.set_progress_bar_config(disable=True)

    def run_auto():
        auto.use_frozen_unet(False)  # a fresh process's state: the frozen copy's build is inside the job
        auto.choose_unet_path("auto", calls)
        return sample_job(auto, args.num_images, args.batch, args.steps, args.seed)

    chosen = auto.choose_unet_path("auto", calls)
    runs = {"diffusers LDMPipeline": lambda: sample_job(ldm, args.num_images, args.batch, args.steps, args.seed),
            "vqldm --unet-path eager": lambda: sample_job(eager, args.num_images, args.batch, args.steps, args.seed),
            f"vqldm default (auto -> {chosen})": run_auto}

    print(f"model: {'--model ' + args.model if args.model else f'CompVis-shaped {args.image_size}x{args.image_size} f=4, widths unet {args.unet_width} / vq {args.vq_width} (random weights)'}; "
          f"scheduler {args.scheduler}, {args.steps} steps, {args.num_images} images in batches of {args.batch}, seed {args.seed}"
          f"{'' if args.no_channels_last else '; vqldm with channels-last weights, as load_pipeline'}")
    print(f"CPU: {cpu_name()}, cpu_count {os.cpu_count()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"vqldm default path: {chosen} ({calls} UNet calls = batches x steps; auto freezes from {FROZEN_MIN_UNET_CALLS})")

    for p in (ldm, eager):  # untimed warm-up batch (oneDNN primitive caches, allocator)
        p(batch_size=args.batch, generator=torch.Generator().manual_seed(args.seed), num_inference_steps=2, output_type="np")
    times = {name: [] for name in runs}  # wall-clock seconds per job
    cpu_times = {name: [] for name in runs}  # this process's CPU seconds: what a shared machine's load does not inflate
    outputs = {}
    for r in range(args.repeats):  # interleaved, so background load hits every variant alike, in both orders
        for name, fn in (list(runs.items()) if r % 2 == 0 else list(runs.items())[::-1]):
            t0, c0 = time.perf_counter(), time.process_time()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)
            cpu_times[name].append(time.process_time() - c0)
    reference, ok = outputs["diffusers LDMPipeline"], True
    for name, out in outputs.items():
        if name != "diffusers LDMPipeline":
            diff = float(np.abs(out - reference).max())
            ok &= diff <= 1e-3
            print(f"  images agree: {name} vs LDMPipeline max |diff| = {diff:.2e} {'OK' if diff <= 1e-3 else 'FAIL (> 1e-3)'}")
    base = statistics.median(times["diffusers LDMPipeline"]) / args.num_images
    cpu_base = statistics.median(cpu_times["diffusers LDMPipeline"]) / args.num_images
    print(f"seconds per image, whole job (median of {args.repeats}; wall clock, and CPU time of this process):")
    for name, ts in times.items():
        per, cpu = statistics.median(ts) / args.num_images, statistics.median(cpu_times[name]) / args.num_images
        print(f"  {name:<32s} {per:7.4f} s/image  ratio {per / base:5.3f} | CPU {cpu:7.4f} s/image  ratio {cpu / cpu_base:5.3f}"
              f"   (runs: {', '.join(f'{t:.1f}' for t in ts)} s)")

    peak = matmul_gflops()
    print(f"fp32 matmul 2048^3: {peak:.1f} GFLOP/s")
    layouts = {"contiguous (diffusers)": (vqvae, unet), **({} if args.no_channels_last else {"channels_last": (vq_cl, unet_cl)})}
    for label, (vq, un) in layouts.items():
        r = component_rates(vq, un, args.batch, max(3, args.repeats))
        print(f"  {label}: UNet {r['unet_gflop_per_image_step']:.2f} GFLOP/image/step at {r['unet_gflops']:.1f} GFLOP/s "
              f"({r['unet_gflops'] / peak:.0%} of matmul); decoder {r['decoder_gflop_per_image']:.2f} GFLOP/image at "
              f"{r['decoder_gflops']:.1f} GFLOP/s ({r['decoder_gflops'] / peak:.0%})")
    row = unet_call_costs(unet_cl, args.batch, max(3, args.repeats))
    flops = count_flops(lambda: unet(*row["inputs"]))  # the eager graph's FLOPs: the same maths
    print(f"  frozen UNet: {flops / args.batch / 1e9:.2f} GFLOP/image/step at {flops / row['frozen'][0] / 1e9:.1f} GFLOP/s "
          f"({flops / row['frozen'][0] / 1e9 / peak:.0%} of matmul); " + break_even_words(row))
    print_time_budget(auto, chosen, row, args, statistics.median(times[f"vqldm default (auto -> {chosen})"]) / args.num_images)
    if args.profile:
        print_op_profile(unet_cl, row["inputs"], args.steps)
    return 0 if ok else 1


def print_time_budget(pipe, path: str, row: dict, args, measured: float) -> None:
    """Where vqldm's default path spends a job's time, per image: each part timed on its own at ``--batch``."""
    vq, batch, repeats = pipe.vqvae, args.batch, max(3, args.repeats)
    x = torch.randn(batch, *row["inputs"][0].shape[1:])
    scheduler = copy.deepcopy(pipe.scheduler)

    def all_steps():  # a fresh pass each time: a multistep scheduler keeps its place in the schedule
        scheduler.set_timesteps(args.steps)
        for t in scheduler.timesteps:
            scheduler.step(x, t, x)

    per_call, build = row[path] if path == "frozen" else (row["eager"], 0.0)
    with torch.inference_mode():
        quantized = vq.quantize(x)[0]
        parts = {
            f"UNet ({path}), {args.steps} calls": per_call * args.steps / batch,
            "its one-time build": build / args.num_images,
            "VQ decoder": median_seconds(lambda: vq.decoder(vq.post_quant_conv(quantized)), repeats) / batch,
            "VQ quantization": median_seconds(lambda: vq.quantize(x), repeats) / batch,
            f"scheduler, {args.steps} steps": median_seconds(all_steps, repeats) / batch,
        }
    total = sum(parts.values())
    print(f"where vqldm's default path spends its time, s/image (each part timed alone at batch {batch}; "
          f"sum {total:.4f} vs {measured:.4f} measured in the job):")
    print("  " + " | ".join(f"{name} {sec:.4f} ({sec / measured:.0%})" for name, sec in parts.items())
          + f" | the rest {measured - total:+.4f} ({(measured - total) / measured:+.0%})")


def print_op_profile(unet, inputs: tuple, calls: int) -> None:
    """The operators that take the most time in ``calls`` UNet calls of each frozen copy (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    for name, frozen in frozen_copies(unet).items():
        with torch.no_grad():
            frozen(*inputs)  # built outside the profile
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(calls):
                    frozen(*inputs)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        print(f"  {name}, {calls} calls: {total / 1e3 / calls:.1f} ms per call; self time by operator "
              "(the graph's own prim:: convolutions count as 'forward'):")
        print("    " + ", ".join(f"{e.key} {e.self_cpu_time_total / total:.1%}" for e in events[:10]))


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
    from vqldm.evaluation.features import load_feature_extractor
    from vqldm.evaluation.metrics import fid_from_features

    extractor = load_feature_extractor(features_name)
    return fid_from_features(extractor(real), extractor(fake))


def quality(args) -> int:
    from vqldm.data.config import DataConfig
    from vqldm.data.sources import load_datasets
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
    # vqldm's default runs the UNet path --unet-path picks for this job (batches x steps UNet calls), as
    # `vqldm generate` would; a frozen UNet's one-time build is inside its time.
    for name, sched, steps in (("diffusers default", "ddim", DEFAULT_STEPS), ("vqldm default", default_sched, default_steps)):
        pipe.set_scheduler(sched)
        pipe.use_frozen_unet(False)
        if name == "vqldm default":
            calls = -(-args.samples // args.batch) * steps
            print(f"  vqldm default UNet path: {pipe.choose_unet_path(args.unet_path, calls)} (--unet-path {args.unet_path}, {calls} UNet calls)")
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
    p.add_argument("--num-images", type=int, default=64, help="images per timed job (speed mode)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the acceptance number uses 2)")
    p.add_argument("--unet-path", default="auto", choices=["auto", "eager", "frozen"],
                   help="vqldm's UNet path in quality mode (default auto, as vqldm generate)")
    p.add_argument("--no-channels-last", action="store_true", help="speed mode: vqldm with diffusers' contiguous weights")
    p.add_argument("--quality", action="store_true", help="default sampler vs DDIM-50 at equal FID (needs --model, --data)")
    p.add_argument("--profile", action="store_true", help="speed mode: also the operators that take the frozen UNet's time")
    p.add_argument("--break-even", action="store_true",
                   help="only the per-call rows behind FROZEN_MIN_UNET_CALLS: eager vs frozen UNet at each of --batches")
    p.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 4, 16],
                   help="batch sizes for --break-even (default 1,4,16)")
    p.add_argument("--data", default="fashion-mnist", help="real images for FID (quality mode)")
    p.add_argument("--samples", type=int, default=500, help="samples per setting for FID (quality mode)")
    p.add_argument("--guidance", type=float, default=1.0, help="guidance for class-conditional models (quality mode)")
    p.add_argument("--features", default=None, help="feature extractor for FID (default: the shipped detail-sensitive classifier)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.break_even:
        return break_even(args)
    return quality(args) if args.quality else speed(args)


if __name__ == "__main__":
    sys.exit(main())
