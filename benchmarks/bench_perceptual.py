"""Perceptual stage 1 (issue 11, item 2): the L1-only preset against offline perceptual terms and a small
PatchGAN, at equal steps, and the chosen `fashion-mnist` preset against the L1-only one at equal training time.

    python benchmarks/bench_perceptual.py                                   # every variant, 1000 steps each
    python benchmarks/bench_perceptual.py --variants l1,preset,l1-equal-time   # acceptance: equal time

Each variant trains ``vqldm train-autoencoder`` (preset + overrides below; no network is downloaded and
none is the evaluation network), then ``vqldm evaluate autoencoder --features fashion-mnist-detail
--max-images 1000`` scores its held-out reconstructions: rFID with the calibration rows of the same
features and images (the paired real-vs-real floor, the originals blurred by 0.5 px and 1 px, with noise),
PSNR, SSIM, codebook usage. Variants with a discriminator also report the switch-on: the training PSNR
(25-step means) just before ``disc_start`` and its lowest value in the 400 steps after it.
``l1-equal-time`` trains the L1-only preset for as many steps as fit into the ``preset`` run's training
time (from the two runs' measured seconds per step; ``train.max_seconds`` caps it as well).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import yaml
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py

from common import cpu_name, run_main  # noqa: E402

# A small PatchGAN for 32 px images (2 stride-2 layers: 32 -> 8 -> 6x6 patch logits, 32 channels) that starts
# training at step 200 while the decoder's adversarial weight ramps up over the next 200 steps.
GAN = ["--set", "loss.disc_weight=0.5", "--set", "loss.disc_start=200", "--set", "loss.disc_ramp_steps=200",
       "--set", "loss.disc_layers=2", "--set", "loss.disc_channels=32"]
FFL = ["--set", "loss.frequency_weight=10"]
VARIANTS = {  # name: (preset, overrides)
    "l1": ("fashion-mnist-l1", []),
    "frequency-10": ("fashion-mnist-l1", FFL),
    "gradient-1": ("fashion-mnist-l1", ["--set", "loss.gradient_weight=1"]),
    "freq10-hinge": ("fashion-mnist-l1", [*FFL, *GAN]),
    "freq10-ns-lecam": ("fashion-mnist-l1", [*FFL, *GAN, "--set", "loss.disc_loss=non_saturating", "--set", "loss.lecam_weight=0.1"]),
    "freq10-hinge-noramp": ("fashion-mnist-l1", [*FFL, *GAN, "--set", "loss.disc_ramp_steps=0"]),
    "preset": ("fashion-mnist", []),
    "l1-equal-time": ("fashion-mnist-l1", []),  # steps set from the `preset` and `l1` runs
}


def switch_on(run: Path) -> str:
    """Training PSNR just before the discriminator starts and its minimum in the 400 steps after."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())["loss"]
    if not cfg.get("disc_weight"):
        return "-"
    start = int(cfg["disc_start"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "train/psnr" in r]
    before = [r["train/psnr"] for r in rows if r["step"] <= start]
    after = [r["train/psnr"] for r in rows if start < r["step"] <= start + 400]
    if not before or not after:
        return "-"
    return f"{before[-1]:.2f} -> min {min(after):.2f} dB ({min(after) - before[-1]:+.2f})"


def vqldm(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "vqldm", *args], check=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--out", default="bench_out/perceptual")
    p.add_argument("--features", default="fashion-mnist-detail")
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--fresh", action="store_true", help="retrain variants whose run folder exists")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    root = Path(args.out)
    print(f"CPU: {cpu_name()}; each process as the environment sets its threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); "
          f"{args.steps} steps per variant")
    rows = []
    for name in names:
        run = root / name
        preset, overrides = VARIANTS[name]
        steps = args.steps
        if name == "l1-equal-time":
            ref, base = (json.loads((root / v / "metrics.json").read_text()) for v in ("preset", "l1"))
            budget = ref["train_seconds"]
            steps = max(1, round(budget / (base["train_seconds"] / base["step"])))
            overrides = [*overrides, "--set", f"train.max_seconds={budget:.1f}"]
            print(f"l1-equal-time: {steps} steps of the L1-only preset in the preset's {budget:.0f} s "
                  f"(preset {ref['train_seconds'] / ref['step']:.3f} s/step, L1 {base['train_seconds'] / base['step']:.3f} s/step)")
        if args.fresh and run.exists():
            shutil.rmtree(run)
        if not (run / "vqvae").is_dir():
            shutil.rmtree(run, ignore_errors=True)
            vqldm("train-autoencoder", "--config", preset, "--data", "fashion-mnist", "--out", str(run),
                  "--max-steps", str(steps), "--set", "train.progress=false", *overrides)
        metrics = json.loads((run / "metrics.json").read_text())
        report_dir = root / f"eval-{name}"
        vqldm("evaluate", "autoencoder", "--model", str(run), "--features", args.features, "--max-images",
              str(args.eval_images), "--out", str(report_dir), "--no-progress")
        report = json.loads((report_dir / "report.json").read_text())
        cal = {r["name"]: r["fd"] for r in report["calibration"]}
        rows.append((name, metrics, report, cal, switch_on(run)))

    print(f"\n{args.steps} steps each unless the steps column says otherwise; rFID = {args.eval_images} held-out reconstructions vs their originals, "
          f"{rows[0][2]['rfid_features'] if rows else args.features} features")
    head = f"{'variant':20s} {'rFID':>8s} {'floor':>7s} {'blur0.5':>8s} {'blur1':>8s} {'noise':>8s} {'PSNR dB':>8s} {'SSIM':>7s} {'usage':>7s} {'steps':>6s} {'train s':>8s}"
    print(head)
    for name, metrics, report, cal, switch in rows:
        seconds = metrics.get("train_seconds") or float("nan")
        print(f"{name:20s} {report['rfid']:8.3f} {cal.get('real-vs-real', float('nan')):7.3f} {cal.get('blur 0.5px', float('nan')):8.3f} "
              f"{cal.get('blur 1px', float('nan')):8.3f} {cal.get('noise std 0.1', float('nan')):8.3f} {report['psnr']:8.2f} "
              f"{report['ssim']:7.4f} {report['codebook']['codebook_usage']:6.1f}% {metrics['step']:6d} {seconds:8.0f}")
        print(f"{'':20s} rFID {report['rfid_scale']}" + (f"; discriminator switch-on: train PSNR {switch}" if switch != "-" else ""))


if __name__ == "__main__":
    run_main(main)
