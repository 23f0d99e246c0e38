"""GPU check: vqldm's CUDA, fp16 and bf16 paths, end to end, in a few minutes.

    python benchmarks/gpu_check.py                  # on a CUDA machine (bash benchmarks/gpu_check.sh wraps it)
    python benchmarks/gpu_check.py --device cpu     # the same path on CPU (autocast off), as the tests run it

What it runs (every number printed is measured here):
1. Both trainers from the command line (``python -m vqldm train-autoencoder`` / ``train-diffusion``, tiny
   presets, a synthetic labelled image folder it writes) with ``train.mixed_precision`` no / bf16 / fp16:
   exit code, final loss, seconds per step. On CPU autocast is off (accelerate trains fp32).
2. Sampling in fp16 and bf16 autocast against fp32 on the same weights, seed and scheduler: max |diff| of
   the images in [0, 1] (CUDA only; CPU runs fp32 only).
3. vqldm's pipeline against diffusers' ``LDMPipeline`` on the same weights (a CompVis-shaped f=4 model,
   random weights), scheduler, steps, batch and seed: images must agree (max |diff| <= 1e-3), and the
   median seconds per image of each, interleaved, with their ratio.
Exit code 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import copy
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
from PIL import Image

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import cpu_name  # noqa: E402


def write_folder(root: Path, n_per_class: int = 64, size: int = 16) -> Path:
    """Two classes of grayscale shapes (squares / discs) with noise, one subfolder each."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for label, name in enumerate(("square", "disc")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.integers(0, 60, (size, size), dtype=np.uint8)
            c = rng.integers(5, size - 5, 2)
            r = int(rng.integers(2, 5))
            if label == 0:
                img[c[0] - r : c[0] + r, c[1] - r : c[1] + r] = 220
            else:
                img[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 < r * r] = 255
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


def run_cli(args: list[str], env: dict) -> tuple[int, float, str]:
    """``python -m vqldm ARGS`` as a user runs it: (exit code, wall seconds, last stderr line)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vqldm", *args], env=env, capture_output=True, text=True)
    lines = (proc.stderr or "").strip().splitlines()
    return proc.returncode, time.perf_counter() - t0, lines[-1] if lines else ""


def last_loss(run: Path, key: str) -> float | None:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    values = [r[key] for r in rows if key in r]
    return values[-1] if values else None


def check_trainers(work: Path, steps: int, env: dict, precisions: list[str]) -> bool:
    data = write_folder(work / "data")
    common = ["--data", str(data), "--labels", "folders", "--max-steps", str(steps),
              "--set", "train.progress=false", "--set", f"train.checkpoint_every={steps}", "--set", f"train.image_every={steps}"]
    ok = True
    print(f"1. trainers, {steps} steps each (tiny presets, synthetic 16 px folder of {len(list(data.rglob('*.png')))} images)")
    for mp in precisions:
        ae, ldm = work / f"ae-{mp}", work / f"ldm-{mp}"
        code, sec, err = run_cli(["train-autoencoder", "--config", "tiny", "--out", str(ae), *common,
                                  "--set", f"train.mixed_precision={mp}", "--set", "train.eval_max_images=64"], env)
        loss = last_loss(ae, "train/loss")
        good = code == 0 and loss is not None and np.isfinite(loss)
        ok &= good
        print(f"   train-autoencoder mixed_precision={mp:<4s}: exit {code}, last loss {loss}, {sec:.1f} s wall "
              f"{'OK' if good else 'FAIL: ' + err}")
        if code != 0:
            continue
        code, sec, err = run_cli(["train-diffusion", "--config", "tiny", "--autoencoder", str(ae), "--out", str(ldm), *common,
                                  "--set", f"train.mixed_precision={mp}"], env)
        loss = last_loss(ldm, "train/loss")
        metrics = json.loads((ldm / "metrics.json").read_text()) if (ldm / "metrics.json").is_file() else {}
        good = code == 0 and loss is not None and np.isfinite(loss)
        ok &= good
        print(f"   train-diffusion   mixed_precision={mp:<4s}: exit {code}, last loss {loss}, "
              f"{metrics.get('steps_per_s') or 0:.2f} steps/s, {sec:.1f} s wall {'OK' if good else 'FAIL: ' + err}")
    return ok


def check_precisions(device: str, work: Path) -> bool:
    """fp16 / bf16 autocast sampling vs fp32 on a trained tiny pipeline (from step 1) and on the shipped model."""
    from vqldm.pipelines.pipeline import load_pipeline

    if device != "cuda":
        print("2. fp16 / bf16 sampling: CUDA only (autocast is off on CPU); skipped")
        return True
    ok = True
    print("2. sampling precision vs fp32 (same weights, seed, scheduler; images in [0, 1])")
    candidates = [("shipped model", None)] + [(f"tiny pipeline ({p.parent.name})", p) for p in sorted(work.glob("ldm-no/pipeline"))]
    for label, path in candidates:
        images = {}
        for dtype in ("fp32", "fp16", "bf16"):
            pipe = load_pipeline(path, device=device, dtype=dtype)
            pipe.set_progress_bar_config(disable=True)
            kw = {"class_labels": [i % pipe.num_classes for i in range(16)], "guidance_scale": 2.0} if pipe.num_classes else {}
            out = pipe(batch_size=16, generator=torch.Generator().manual_seed(0), output_type="np", **kw).images
            images[dtype] = out
            if not np.isfinite(out).all():
                ok = False
                print(f"   {label} {dtype}: non-finite pixels FAIL")
        for dtype in ("fp16", "bf16"):
            diff = float(np.abs(images[dtype] - images["fp32"]).max())
            mean = float(np.abs(images[dtype] - images["fp32"]).mean())
            good = mean < 0.05
            ok &= good
            print(f"   {label}: {dtype} vs fp32 max |diff| {diff:.2e}, mean |diff| {mean:.2e} {'OK' if good else 'FAIL (mean >= 0.05)'}")
    return ok


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def check_speed(device: str, quick: bool, repeats: int) -> bool:
    from diffusers import LDMPipeline
    from bench_sampling import compvis_shaped_parts

    from vqldm.pipelines.pipeline import VQLatentDiffusionPipeline, make_scheduler

    size, width, steps, batch = (32, 32, 5, 2) if quick else (64, 64, 50, 16)
    vqvae, unet, scheduler = compvis_shaped_parts(size, width, width)
    scheduler = make_scheduler("ddim", scheduler.config)
    ldm = LDMPipeline(vqvae=vqvae, unet=unet, scheduler=copy.deepcopy(scheduler)).to(device)
    ours = VQLatentDiffusionPipeline(vqvae, unet, copy.deepcopy(scheduler)).to(device)
    for p in (ldm, ours):
        p.set_progress_bar_config(disable=True)

    def run(pipe):
        def f():
            out = pipe(batch_size=batch, generator=torch.Generator().manual_seed(0), num_inference_steps=steps, output_type="np").images
            sync(device)
            return out
        return f

    runs = {"diffusers LDMPipeline": run(ldm), "vqldm": run(ours)}
    outs = {name: fn() for name, fn in runs.items()}  # also warm-up
    diff = float(np.abs(outs["vqldm"] - outs["diffusers LDMPipeline"]).max())
    ok = diff <= 1e-3
    print(f"3. vqldm vs LDMPipeline on {device}: CompVis-shaped {size}px f=4 (widths {width}), ddim {steps} steps, batch {batch}")
    print(f"   images agree: max |diff| {diff:.2e} {'OK' if ok else 'FAIL (> 1e-3)'}")
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["diffusers LDMPipeline"]) / batch
    for name, ts in times.items():
        per = statistics.median(ts) / batch
        print(f"   {name:<22s} {per * 1000:8.2f} ms/image   ratio {per / base:5.3f}   (median of {repeats})")
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--steps", type=int, default=20, help="training steps per trainer run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="small sampling model and few steps (CPU tests)")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible; run with --device cpu", file=sys.stderr)
        return 2
    print(f"gpu_check {time.strftime('%Y-%m-%d %H:%M')}: torch {torch.__version__}, CPU {cpu_name()}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}")
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"GPU {props.name}, {props.total_memory / 2**30:.0f} GiB, capability {props.major}.{props.minor}, "
              f"bf16 supported: {torch.cuda.is_bf16_supported()}, CUDA {torch.version.cuda}")
    # on CPU accelerate trains fp32 whatever is asked; two runs show the setting is accepted and harmless
    precisions = ["no", "bf16", "fp16"] if args.device == "cuda" else ["no", "fp16"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = {"trainers": check_trainers(work, args.steps, env, precisions)}
        results["precision"] = check_precisions(args.device, work)
        results["speed"] = check_speed(args.device, args.quick, args.repeats)
    print("summary: " + ", ".join(f"{k} {'OK' if v else 'FAIL'}" for k, v in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
