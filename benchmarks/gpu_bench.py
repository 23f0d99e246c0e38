"""GPU benchmark: vqldm's training and sampling at the 256 px presets' shapes, against plain reference code.

    bash benchmarks/gpu_bench.sh                       # on a CUDA machine: under 8 minutes
    bash benchmarks/gpu_bench.sh --device cpu --quick  # the same path on CPU at tiny widths (the tests run it)

``gpu_check.sh`` stays the correctness check; this one measures (every number printed is measured here):

1. Stage 1 at the shapes of ``ldm-vq-f4-256`` and ``ldm-vq-f8-256`` (256 px RGB, a synthetic folder of
   256 px PNGs it writes): training images/s of ``vqldm train-autoencoder`` (the preset, from the command
   line, ``images_per_s`` of its metrics.json: every loop step of the session, the first included) against
   a reference loop of the kind diffusers' examples show -- the same VQModel architecture and batch,
   L1 + diffusers' commitment loss, AdamW, the same autocast, backward -- timed over as many steps, the
   first included; and the peak GPU memory of each.
2. Stage 2 at the shape of ``celebahq-256`` on the f4 autoencoder's 64x64x3 latents: ``vqldm
   train-diffusion`` (latent cache built before the loop) against a reference loop (the same UNet2DModel,
   batch, DDPM noise, MSE, AdamW, autocast, backward) on random latents already on the device.
3. Sampling: the stage-2 run's pipeline folder through vqldm (fp16 autocast on CUDA) against diffusers'
   ``LDMPipeline`` on the same folder under the same autocast: images/s, DDIM, same seed, steps, batch.
4. A quality probe: ``ldm-vq-f4-256`` trained for a fixed time on the synthetic folder, then ``vqldm
   evaluate autoencoder`` on it: rFID with its calibration rows (in the shipped Fashion-MNIST feature
   network, which sees the images as 32 px luma: a check that training works at this shape, not a
   figure to compare with published rFIDs).

``--quick`` shrinks widths, batches, steps and image counts (the geometry stays the presets'); on CPU
autocast is off and "peak GPU memory" is not measured. Exit code 0 when every run finished.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import cpu_name  # noqa: E402

# --quick: the presets' geometry (256 px RGB, their f, latent channels, UNet levels) at tiny widths
AE_QUICK = ["model.block_out_channels=[8,16,16]", "model.layers_per_block=1", "model.norm_num_groups=4",
            "model.codebook_size=64", "quantizer.kmeans_iters=2", "loss.disc_channels=8", "train.batch_size=2",
            "train.eval_batch_size=4"]
AE_F8_QUICK = ["model.block_out_channels=[8,16,16,16]", *AE_QUICK[1:]]
LDM_QUICK = ["model.block_out_channels=[8,16,16,32]", "model.layers_per_block=1", "model.attention_head_dim=8",
             "model.norm_num_groups=4", "train.batch_size=2", "cache.encode_batch_size=4"]
QUIET = ["train.progress=false", "train.image_every=1000000", "train.checkpoint_every=1000000"]


def write_folder(root: Path, count: int, size: int = 256) -> Path:
    """``count`` RGB PNGs of ``size`` px: a flat colour with discs and squares of other colours."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x, y = (int(v) for v in rng.integers(0, size * 3 // 4, 2))
            s = int(rng.integers(size // 10, size // 4))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + s, y + s],
                                                                     fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        img.save(root / f"{i:04d}.png")
    return root


def vqldm_cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vqldm", *args], env=env, capture_output=True, text=True)


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda" and dtype is not None)


def reference_autoencoder_loop(cfg, device: torch.device, dtype, steps: int) -> tuple[float, float | None]:
    """images/s and peak GB of the plain loop: VQModel, L1 + commitment loss, AdamW, autocast, backward."""
    from vqldm.autoencoder.model import build_vqmodel

    torch.manual_seed(0)
    model = build_vqmodel(cfg.model, cfg.data.image_size, cfg.data.channels).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.adam_betas))
    b = cfg.train.batch_size
    x = torch.rand(b, cfg.data.channels, cfg.data.image_size, cfg.data.image_size, device=device) * 2 - 1
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        with autocast(device, dtype):
            out = model(x)
            loss = (out.sample.float() - x).abs().mean() + out.commit_loss.float().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    synchronize(device)
    return steps * b / (time.perf_counter() - start), peak_gb(device)


def reference_unet_loop(cfg, latent: tuple[int, int, int], device: torch.device, dtype, steps: int) -> tuple[float, float | None]:
    """images/s and peak GB of the plain latent-diffusion loop: the same UNet, DDPM noise, MSE, AdamW, autocast."""
    from diffusers import DDPMScheduler

    from vqldm.diffusion.model import build_unet

    torch.manual_seed(0)
    unet = build_unet(cfg.model, latent, 0).to(device).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.adam_betas))
    sched = DDPMScheduler(num_train_timesteps=cfg.objective.num_train_timesteps)
    b = cfg.train.batch_size
    x0 = torch.randn(b, *latent, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), device=device)
        with autocast(device, dtype):
            pred = unet(sched.add_noise(x0, noise, t), t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    synchronize(device)
    return steps * b / (time.perf_counter() - start), peak_gb(device)


def sampling_rates(folder: Path, device: torch.device, steps: int, batch: int, repeats: int) -> tuple[float, float, float]:
    """(vqldm images/s, LDMPipeline images/s, max |diff|) on the same folder, DDIM, seed, steps and batch;
    fp16 autocast on CUDA for both, fp32 on CPU. Interleaved, medians of ``repeats``."""
    from diffusers import DDIMScheduler, LDMPipeline
    from diffusers.utils import logging as diffusers_logging

    from vqldm.pipelines.pipeline import load_pipeline

    diffusers_logging.disable_progress_bar()  # no "Loading pipeline components" bar in the output

    fp16 = device.type == "cuda"
    ours = load_pipeline(folder, device=str(device), dtype="fp16" if fp16 else "fp32", channels_last=False)
    ours.set_scheduler("ddim")
    theirs = LDMPipeline.from_pretrained(folder, use_safetensors=True).to(device)
    theirs.scheduler = DDIMScheduler.from_config(ours.scheduler.config)
    for p in (ours, theirs):
        p.set_progress_bar_config(disable=True)

    def run_ours():
        return ours(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt").images

    def run_theirs():
        with autocast(device, torch.float16 if fp16 else None):
            return torch.from_numpy(theirs(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                                           output_type="np").images).permute(0, 3, 1, 2)

    a, b = run_ours().float().cpu(), run_theirs().float().cpu()  # warm-up, and the agreement
    times = {"ours": [], "theirs": []}
    for _ in range(repeats):
        for name, fn in (("ours", run_ours), ("theirs", run_theirs)):
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return batch / statistics.median(times["ours"]), batch / statistics.median(times["theirs"]), float((a - b).abs().max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when available)")
    p.add_argument("--quick", action="store_true", help="tiny widths, few steps and images (the CPU path the tests run)")
    p.add_argument("--steps", type=int, default=None, help="training steps per timed run (default 40; --quick 2)")
    p.add_argument("--probe-seconds", type=float, default=None, help="stage-1 training time of the quality probe (default 120; --quick 5)")
    p.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    quick = args.quick
    steps = args.steps or (2 if quick else 40)
    probe_seconds = args.probe_seconds or (5.0 if quick else 120.0)
    work = args.work or Path(tempfile.mkdtemp(prefix="vqldm-gpu-bench-"))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "") if device.type == "cuda" else ""}
    t_start = time.perf_counter()

    gpu = (f"GPU {torch.cuda.get_device_name(device)}, {torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB, "
           f"CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}") if device.type == "cuda" else "no GPU (device cpu)"
    print(f"gpu_bench {time.strftime('%Y-%m-%d %H:%M')}: torch {torch.__version__}, {gpu}, CPU {cpu_name()}, "
          f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}{', --quick' if quick else ''}", flush=True)
    from vqldm.autoencoder.config import load_autoencoder_config
    from vqldm.diffusion.config import load_diffusion_config
    from vqldm.plumbing.trainkit import autocast_precision

    data = write_folder(work / "images", 48 if quick else 1000)  # held-out (5%): 2 / 50 images for the probe
    ok = True

    # ------------------------------------------------------------------ 1. stage 1
    print(f"1. stage 1, {steps} training steps per run (images/s over all of them; vqldm = the trainer's loop, "
          f"reference = VQModel + L1 + commitment + AdamW)", flush=True)
    ae_runs = {}
    for preset, quick_sets in (("ldm-vq-f4-256", AE_QUICK), ("ldm-vq-f8-256", AE_F8_QUICK)):
        overrides = [*QUIET, "train.eval_max_images=8", "train.scaling_max_images=16", "data.holdout_fraction=0.1",
                     *(quick_sets if quick else [])]
        cfg = load_autoencoder_config(preset, overrides)
        mp = autocast_precision(cfg.train.mixed_precision, device.type == "cuda",
                                device.type == "cuda" and torch.cuda.is_bf16_supported())
        run = work / f"ae-{preset}"
        proc = vqldm_cli(["train-autoencoder", "--config", preset, "--data", str(data), "--out", str(run), "--max-steps", str(steps),
                          *sets(overrides)], env)
        if proc.returncode != 0:
            print(f"   {preset}: vqldm train-autoencoder failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            ok = False
            continue
        ae_runs[preset] = run
        m = json.loads((run / "metrics.json").read_text())
        ours = m["images_per_s"]
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp)
        ref, ref_peak = reference_autoencoder_loop(cfg, device, dtype, steps)
        mem = (f"; peak GPU memory vqldm {m.get('peak_gpu_memory_gb') or 0:.1f} GB, reference {ref_peak:.1f} GB"
               if ref_peak is not None else "")
        print(f"   {preset}: batch {cfg.train.batch_size}, autocast {mp}: vqldm {ours:.2f} images/s, reference "
              f"{ref:.2f} images/s, ratio {ours / ref:.2f}{mem}", flush=True)

    # ------------------------------------------------------------------ 2. stage 2
    print(f"2. stage 2 (celebahq-256 UNet on the f4 latents), {steps} training steps per run", flush=True)
    ldm_run = work / "ldm"
    if "ldm-vq-f4-256" in ae_runs:
        overrides = [*QUIET, "model.class_conditional=false", "train.num_sample_images=1", "train.sample_steps=1",
                     *(LDM_QUICK if quick else [])]
        cfg = load_diffusion_config("celebahq-256", overrides)
        mp = autocast_precision(cfg.train.mixed_precision, device.type == "cuda",
                                device.type == "cuda" and torch.cuda.is_bf16_supported())
        proc = vqldm_cli(["train-diffusion", "--config", "celebahq-256", "--autoencoder", str(ae_runs["ldm-vq-f4-256"]),
                          "--data", str(data), "--out", str(ldm_run), "--max-steps", str(steps), *sets(overrides)], env)
        if proc.returncode != 0:
            print(f"   vqldm train-diffusion failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            ok = False
        else:
            m = json.loads((ldm_run / "metrics.json").read_text())
            latent = tuple(m["latent_shape"])
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp)
            ref, ref_peak = reference_unet_loop(cfg, latent, device, dtype, steps)
            mem = (f"; peak GPU memory vqldm {m.get('peak_gpu_memory_gb') or 0:.1f} GB, reference {ref_peak:.1f} GB"
                   if ref_peak is not None else "")
            print(f"   celebahq-256 on {'x'.join(map(str, latent))} latents: batch {cfg.train.batch_size}, autocast {mp}: "
                  f"vqldm {m['images_per_s']:.2f} images/s, reference {ref:.2f} images/s, ratio {m['images_per_s'] / ref:.2f}{mem}",
                  flush=True)
    else:
        print("   skipped: no f4 autoencoder")
        ok = False

    # ------------------------------------------------------------------ 3. sampling
    s_steps, s_batch = (2, 2) if quick else (50, 8)
    print(f"3. sampling the stage-2 pipeline: DDIM {s_steps} steps, batch {s_batch}, "
          f"{'fp16 autocast' if device.type == 'cuda' else 'fp32'}, medians of interleaved runs", flush=True)
    if (ldm_run / "pipeline" / "model_index.json").is_file():
        ours, theirs, diff = sampling_rates(ldm_run / "pipeline", device, s_steps, s_batch, 2 if quick else 5)
        print(f"   vqldm {ours:.2f} images/s, diffusers LDMPipeline {theirs:.2f} images/s, ratio {ours / theirs:.2f}; "
              f"images agree to max |diff| {diff:.2e}", flush=True)
    else:
        print("   skipped: no pipeline folder")

    # ------------------------------------------------------------------ 4. quality probe
    print(f"4. quality probe: ldm-vq-f4-256 for {probe_seconds:.0f} s of training on the synthetic folder, then vqldm evaluate "
          f"autoencoder (rFID in the shipped feature network, which sees 32 px luma)", flush=True)
    probe = work / "probe"
    overrides = [*QUIET, f"train.max_seconds={probe_seconds}", "train.eval_max_images=32", "data.holdout_fraction=0.1",
                 *(AE_QUICK if quick else [])]
    proc = vqldm_cli(["train-autoencoder", "--config", "ldm-vq-f4-256", "--data", str(data), "--out", str(probe),
                      *sets(overrides)], env)
    if proc.returncode == 0:
        m = json.loads((probe / "metrics.json").read_text())
        ev = vqldm_cli(["evaluate", "autoencoder", "--model", str(probe), "--data", str(data), "--out", str(work / "probe-eval"),
                        "--max-images", "16" if quick else "64", "--no-progress", "--device", device.type], env)
        print(f"   {m['step']} steps in {m['train_seconds']:.0f} s; held-out PSNR {m['holdout']['psnr']:.2f} dB, codebook usage "
              f"{m['holdout']['codebook_usage']:.0f}%")
        if ev.returncode == 0:
            print("   " + "\n   ".join(line for line in ev.stdout.strip().splitlines() if line.strip()))
        else:
            print(f"   vqldm evaluate failed (exit {ev.returncode}): {ev.stderr.strip().splitlines()[-1:]}")
            ok = False
    else:
        print(f"   vqldm train-autoencoder failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        ok = False

    print(f"gpu_bench {'done' if ok else 'FAILED'} in {time.perf_counter() - t_start:.0f} s", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
