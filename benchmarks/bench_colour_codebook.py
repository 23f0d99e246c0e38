"""Codebook usage of the `--config auto` CPU autoencoder on a small colour folder, for several quantizer settings.

    pip install scikit-image                                   # benchmark-only (the photos, CIE Lab)
    python benchmarks/bench_colour_codebook.py --steps 400     # ~5-8 minutes per setting on one core

Issue 12 measured, on a folder of 1,432 RGB 64x64 images, codebook usage falling from 100% to 55% in 400
steps with the VQ-VAE quantizer defaults. This script builds such a folder (benchmarks/make_colour_folder.py:
1,500 random crops of scikit-image's photos), trains `vqldm train-autoencoder --config auto --data FOLDER
--max-steps N` once per setting (each `--set` on top of what auto picks; one thread each), and prints a
markdown table: held-out codebook usage and dead codes at the end, the lowest usage over a training epoch
(codes used at least once in an epoch: the number that must stay above 95%), perplexity, restarts, held-out PSNR, the colour error of reconstructions (mean
CIE76 delta E in Lab and the chroma kept, on every 10th image of the folder), and seconds per step.
Runs that finished before are reused (delete the run folder to redo one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import cpu_name  # noqa: E402

# name -> (what it changes, --set overrides); every setting names all the keys it depends on
SETTINGS = {
    "vqvae-defaults": ("EMA decay 0.99, dead below 1 hit/step (issue 12's settings)",
                       ["quantizer.ema_decay=0.99", "quantizer.dead_code_threshold=1.0", "model.codebook_size=256"]),
    "decay-0.95": ("EMA decay 0.95", ["quantizer.ema_decay=0.95", "quantizer.dead_code_threshold=1.0", "model.codebook_size=256"]),
    "decay-0.9": ("EMA decay 0.9", ["quantizer.ema_decay=0.9", "quantizer.dead_code_threshold=1.0", "model.codebook_size=256"]),
    "decay-0.8": ("EMA decay 0.8", ["quantizer.ema_decay=0.8", "quantizer.dead_code_threshold=1.0", "model.codebook_size=256"]),
}


def train(name: str, sets: list[str], data: Path, out: Path, steps: int, threads: int) -> tuple[Path, str]:
    run = out / name
    if (run / "metrics.json").is_file():
        return run, "(reused)"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "vqldm", "train-autoencoder", "--config", "auto", "--data", str(data), "--out", str(run),
           "--max-steps", str(steps), "--set", "train.progress=false", *[a for s in sets for a in ("--set", s)]]
    if run.exists():
        cmd.append("--resume")
    print("+", " ".join(cmd[1:]), flush=True)
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    auto_line = next((line for line in proc.stdout.splitlines() if line.startswith("auto config:")), "")
    # what a later, reusing call prints: the choice and how busy the machine was (seconds per step depend on it)
    (run / "bench.json").write_text(json.dumps({"auto_line": auto_line, "load_before": load, "load_after": os.getloadavg()[0]}))
    return run, auto_line


def colour_error(run: Path, data: Path) -> tuple[float, float]:
    """Mean CIE76 delta E (Lab) between every 10th image of the folder and its reconstruction, and the
    reconstructions' mean chroma as a share of the originals' (100% = no hue washed out)."""
    import torch
    import yaml
    from diffusers import VQModel
    from skimage.color import rgb2lab

    from vqldm.data.decode import IMAGE_SUFFIXES, load_image

    cfg = yaml.safe_load((run / "config.yaml").read_text())["data"]
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[::10]
    x = np.stack([load_image(p, cfg["channels"], cfg["image_size"], cfg["fit"]) for p in files])  # N x H x W x C uint8
    vq = VQModel.from_pretrained(run / "vqvae").eval()
    with torch.no_grad():
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
        rec = torch.cat([vq(t[i:i + 50]).sample for i in range(0, len(t), 50)])
    r = ((rec.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    lab_x, lab_r = rgb2lab(x / 255.0), rgb2lab(r)
    delta_e = float(np.sqrt(((lab_x - lab_r) ** 2).sum(-1)).mean())
    chroma = lambda lab: np.hypot(lab[..., 1], lab[..., 2]).mean()  # noqa: E731
    return delta_e, float(100 * chroma(lab_r) / chroma(lab_x))


def summarise(run: Path, steps: int) -> dict:
    final = json.loads((run / "metrics.json").read_text())
    bench = json.loads((run / "bench.json").read_text()) if (run / "bench.json").is_file() else {}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [(r["step"], r["epoch/codebook_usage"]) for r in rows if "epoch/codebook_usage" in r]
    h = final["holdout"]
    return {"usage": h["codebook_usage"], "dead": h["dead_codes"], "codes": h["codes_used"] + h["dead_codes"],
            "min_epoch_usage": min(u for _, u in epochs) if epochs else float("nan"),
            "min_epoch_step": min(epochs, key=lambda e: e[1])[0] if epochs else 0, "perplexity": h["perplexity"],
            "restarts": final.get("restarts", 0), "psnr": h["psnr"], "s_per_step": final["train_seconds"] / max(1, final["step"]),
            "load": (f"{bench['load_before']:.1f}-{bench['load_after']:.1f}" if bench else "?"), "auto_line": bench.get("auto_line", "")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("bench_out/colour_folder"))
    ap.add_argument("--count", type=int, default=1500, help="crops to write when --data does not exist")
    ap.add_argument("--out", type=Path, default=Path("bench_out/colour_codebook"))
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names: " + ", ".join(SETTINGS))
    args = ap.parse_args()
    if not args.data.is_dir():
        from make_colour_folder import make_folder

        make_folder(args.data, args.count)
    args.out.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting {unknown[0]!r}; choose from {', '.join(SETTINGS)}")

    results = {}
    for name in names:
        t0 = time.time()
        run, _ = train(name, SETTINGS[name][1], args.data, args.out, args.steps, args.threads)
        results[name] = summarise(run, args.steps)
        results[name]["delta_e"], results[name]["chroma"] = colour_error(run, args.data)
        print(f"{name}: {time.time() - t0:.0f} s wall", flush=True)

    print()
    print(f"{args.data} ({sum(1 for _ in args.data.rglob('*.png'))} images), {args.steps} steps of `--config auto` on CPU; "
          f"{cpu_name()}, {args.threads} thread(s) per run (torch), one run at a time")
    auto_line = next((r["auto_line"] for r in results.values() if r["auto_line"]), "")
    if auto_line:
        print(auto_line)
    print()
    print("| setting | held-out usage | dead codes | lowest epoch usage (at step) | perplexity | restarts | PSNR (dB) "
          "| colour error ΔE | chroma kept | s/step | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        r = results[name]
        print(f"| {name}: {SETTINGS[name][0]} ({r['codes']} codes) | {r['usage']:.1f}% | {r['dead']} | {r['min_epoch_usage']:.1f}% ({r['min_epoch_step']}) "
              f"| {r['perplexity']:.0f} | {r['restarts']} | {r['psnr']:.2f} | {r['delta_e']:.2f} | {r['chroma']:.0f}% "
              f"| {r['s_per_step']:.2f} | {r['load']} |")


if __name__ == "__main__":
    main()
