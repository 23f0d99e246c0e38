"""Offline perceptual terms for stage 1, at equal training steps: L1 alone vs L1 + focal frequency loss vs
L1 + image-gradient loss (issue 11, item 2; no network is downloaded, none is the evaluation network).

    python benchmarks/bench_perceptual.py                        # 1000 steps each, fashion-mnist preset
    python benchmarks/bench_perceptual.py --steps 200 --variants l1,frequency-10

Each variant trains ``vqldm train-autoencoder --config fashion-mnist`` (the L1-only preset) with its loss
overrides, then ``vqldm evaluate autoencoder --features fashion-mnist-detail --max-images 1000`` scores its
held-out reconstructions: rFID with the calibration rows of the same features and images (the paired
real-vs-real floor, the originals blurred by 0.5 px and 1 px, with noise), PSNR, codebook usage. The
terms cost no measurable time per step, so equal steps are equal training time (the s/step column says it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py

from common import cpu_name, run_main  # noqa: E402

VARIANTS = {
    "l1": [],
    "frequency-10": ["--set", "loss.frequency_weight=10"],
    "gradient-1": ["--set", "loss.gradient_weight=1"],
}


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
    print(f"CPU: {cpu_name()}; each process as the environment sets its threads; {args.steps} steps per variant")
    rows = []
    for name in names:
        run = root / name
        if args.fresh and run.exists():
            shutil.rmtree(run)
        if not (run / "vqvae").is_dir():
            shutil.rmtree(run, ignore_errors=True)
            vqldm("train-autoencoder", "--config", "fashion-mnist", "--data", "fashion-mnist", "--out", str(run),
                  "--max-steps", str(args.steps), "--set", "train.progress=false", *VARIANTS[name])
        metrics = json.loads((run / "metrics.json").read_text())
        report_dir = root / f"eval-{name}"
        start = time.perf_counter()
        vqldm("evaluate", "autoencoder", "--model", str(run), "--features", args.features, "--max-images",
              str(args.eval_images), "--out", str(report_dir), "--no-progress")
        report = json.loads((report_dir / "report.json").read_text())
        cal = {r["name"]: r["fd"] for r in report["calibration"]}
        rows.append((name, metrics, report, cal, time.perf_counter() - start))

    print(f"\n{args.steps} steps each; rFID = {args.eval_images} held-out reconstructions vs their originals, "
          f"{rows[0][2]['rfid_features'] if rows else args.features} features")
    head = f"{'variant':14s} {'rFID':>8s} {'floor':>7s} {'blur0.5':>8s} {'blur1':>8s} {'noise':>8s} {'PSNR dB':>8s} {'SSIM':>7s} {'usage':>7s} {'s/step':>7s}"
    print(head)
    for name, metrics, report, cal, _ in rows:
        seconds = metrics.get("train_seconds") or float("nan")
        print(f"{name:14s} {report['rfid']:8.3f} {cal.get('real-vs-real', float('nan')):7.3f} {cal.get('blur 0.5px', float('nan')):8.3f} "
              f"{cal.get('blur 1px', float('nan')):8.3f} {cal.get('noise std 0.1', float('nan')):8.3f} {report['psnr']:8.2f} "
              f"{report['ssim']:7.4f} {report['codebook']['codebook_usage']:6.1f}% {seconds / args.steps:7.3f}")
        print(f"{'':14s} rFID {report['rfid_scale']}")


if __name__ == "__main__":
    run_main(main)
