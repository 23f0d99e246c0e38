"""Codebook capacity (issue 11, item 3): codebook size x code dimension x lookup, at equal training steps.

    python benchmarks/bench_codebook.py                              # the default sweep: 9 runs x 250 steps, ~30 min on one core
    python benchmarks/bench_codebook.py --steps 20 --runs k16-d4,cos-k256-d4 --out /tmp/cb   # smoke run

Too few codes blur (each position can say only log2 K bits); too many are hard to train (codes that are
never nearest to anything die). This script trains the ``fashion-mnist`` autoencoder preset once per
setting, every run for the same number of steps (same data order, batch, learning-rate schedule; the
preset's cosine decay is stretched over ``--steps``), changing only

* ``model.codebook_size`` K (16 ... 4096) at the preset's code dimension (4),
* the code dimension D (``model.latent_channels`` = the codebook vector size, 2 / 4 / 8) at 256 codes:
  the low-dimensional lookup of ViT-VQGAN (Yu et al. 2022) is this axis,
* ``quantizer.lookup=cosine`` (l2-normalised codes, picked by angle; ViT-VQGAN, LlamaGen), which still
  exports a plain ``diffusers.VQModel`` that decodes identically (see autoencoder/quantizer.py).

Each run is then scored by ``vqldm evaluate autoencoder --model RUN --features F --max-images N``: held-out
PSNR, codebook usage (% of codes used on those N held-out images), perplexity, dead codes, and rFID
(Frechet distance of the reconstructions to the originals in the feature network F) with its calibration
rows in the same features, images and count: real-vs-real floor, the originals blurred by 0.5 / 1 px, and
with noise. The calibration does not depend on the model, so it is printed once (and checked to be the
same for every run). Prints the conditions and a markdown table, writes the plot (``--plot``) and
``OUT/results.json``. Finished trainings are reused (delete a run folder to redo it); the evaluation is
always redone, so a new feature network is picked up.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import cpu_name, run_main  # noqa: E402

# name -> (codebook size K, code dimension D, lookup); the sweep runs in this order
RUNS = {
    "k16-d4": (16, 4, "euclidean"),
    "k64-d4": (64, 4, "euclidean"),
    "k256-d4": (256, 4, "euclidean"),
    "k1024-d4": (1024, 4, "euclidean"),
    "k4096-d4": (4096, 4, "euclidean"),
    "k256-d2": (256, 2, "euclidean"),
    "k256-d8": (256, 8, "euclidean"),
    "cos-k256-d4": (256, 4, "cosine"),
    "cos-k4096-d4": (4096, 4, "cosine"),
}


def train(name: str, run: Path, args) -> tuple[dict, bool]:
    """Train one setting (or reuse a finished run of the same steps); returns (metrics.json, reused)."""
    from vqldm.autoencoder.config import load_autoencoder_config
    from vqldm.autoencoder.train import train_autoencoder

    k, d, lookup = RUNS[name]
    if (run / "metrics.json").is_file() and (run / "vqvae").is_dir():
        saved = json.loads((run / "metrics.json").read_text())
        if saved["step"] != args.steps:
            raise SystemExit(f"{run} was trained for {saved['step']} steps, not {args.steps}; delete it or pass another --out")
        return saved, True
    overrides = [f"model.codebook_size={k}", f"model.latent_channels={d}", f"quantizer.lookup={lookup}",
                 f"train.max_steps={args.steps}", "train.progress=false",
                 # the scale and the trainer's own held-out pass are not what this benchmark reads: keep them short
                 f"train.scaling_max_images={args.max_images}", f"train.eval_max_images={args.max_images}",
                 f"train.checkpoint_every={args.steps}", f"train.image_every={args.steps}", *args.set]
    cfg = load_autoencoder_config(args.config, overrides)
    print(f"+ vqldm train-autoencoder --config {args.config} --data {args.data} --out {run} --max-steps {args.steps} "
          + " ".join(f"--set {o}" for o in overrides[:3]), flush=True)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # the trainer's console lines go to the run folder, not the table
        metrics = train_autoencoder(cfg, run, data=args.data, resume=run.exists())
    (run / "train.log").write_text(log.getvalue())
    return metrics, False


def evaluate(run: Path, args) -> dict:
    """``vqldm evaluate autoencoder`` on the run (its printout kept in RUN/eval-FEATURES.txt); its report.json."""
    from vqldm.cli.main import main as vqldm_main

    tag = Path(args.features).name
    out = run / f"eval-{tag}"
    argv = ["evaluate", "autoencoder", "--model", str(run), "--data", args.data, "--features", args.features,
            "--max-images", str(args.max_images), "--out", str(out), "--seed", "0", "--no-progress"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = vqldm_main(argv)
    (run / f"eval-{tag}.txt").write_text(printed.getvalue())
    if code:
        raise SystemExit(f"vqldm {' '.join(argv)} failed with exit code {code}")
    return json.loads((out / "report.json").read_text())


def row(name: str, metrics: dict, report: dict) -> dict:
    k, d, lookup = RUNS[name]
    cb = report["codebook"]
    return {"name": name, "images": report["images"], "codebook_size": k, "dim": d, "lookup": lookup, "psnr": report["psnr"], "ssim": report["ssim"],
            "rfid": report["rfid"], "rfid_scale": report["rfid_scale"], "usage": cb["codebook_usage"],
            "codes_used": cb["codes_used"], "dead_codes": cb["dead_codes"], "perplexity": cb["perplexity"],
            "bits": cb["entropy_bits"], "restarts": metrics.get("restarts", 0),
            "s_per_step": metrics["train_seconds"] / max(1, metrics["step"])}


def print_table(rows: list[dict], calibration: list[dict]) -> None:
    cal = {r["name"]: r["fd"] for r in calibration}
    floor = cal.get("real-vs-real")
    print("| K codes | dim | lookup | PSNR (dB) | rFID | rFID / floor | rFID on the calibration scale | usage | "
          "perplexity (bits) | dead codes | restarts | s/step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['rfid'] / floor:.1f}x" if floor else "-"
        print(f"| {r['codebook_size']} | {r['dim']} | {r['lookup']} | {r['psnr']:.2f} | {r['rfid']:.2f} | {ratio} | {r['rfid_scale']} "
              f"| {r['usage']:.1f}% | {r['perplexity']:.0f} ({r['bits']:.1f}) | {r['dead_codes']} | {r['restarts']} | {r['s_per_step']:.2f} |")


def plot(rows: list[dict], calibration: list[dict], path: Path, title: str) -> Path:
    from vqldm.evaluation.plots import pyplot, save_figure

    plt = pyplot()
    series: dict[str, list[dict]] = {}
    for r in rows:
        series.setdefault(f"D={r['dim']}, {r['lookup']}", []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for label, pts in series.items():
        pts = sorted(pts, key=lambda r: r["codebook_size"])
        ks = [r["codebook_size"] for r in pts]
        style = dict(marker="o" if "euclidean" in label else "s", linestyle="-" if len(pts) > 1 else "none", label=label)
        axes[0].plot(ks, [r["rfid"] for r in pts], **style)
        axes[1].plot(ks, [r["psnr"] for r in pts], **style)
        axes[2].plot(ks, [r["usage"] for r in pts], **style)
    for cal, colour in zip(calibration, ["black", "tab:gray", "tab:brown", "tab:olive"]):
        axes[0].axhline(cal["fd"], color=colour, linestyle=":", linewidth=1)
        axes[0].annotate(cal["name"], (1.0, cal["fd"]), xycoords=("axes fraction", "data"), xytext=(-3, -9),
                         textcoords="offset points", ha="right", fontsize=7, color=colour)
    for ax, ylabel in zip(axes, ["rFID (log scale; dotted: calibration rows)", "held-out PSNR (dB)", "codebook usage (% of codes)"]):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("codebook size K")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].set_ylim(0, 105)
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="fashion-mnist", help="autoencoder preset every run starts from")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--steps", type=int, default=250, help="training steps of every run (equal budget)")
    p.add_argument("--runs", default=",".join(RUNS), help="comma-separated settings: " + ", ".join(RUNS))
    p.add_argument("--features", default="fashion-mnist-detail",
                   help="feature network of rFID (as `vqldm evaluate --features`; default fashion-mnist-detail)")
    p.add_argument("--max-images", type=int, default=1000, help="held-out images reconstructed and scored per run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every run")
    p.add_argument("--out", type=Path, default=Path("bench_out/codebook"))
    p.add_argument("--plot", type=Path, default=Path("docs/codebook_capacity.png"))
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown or not names:
        raise SystemExit(f"unknown setting {unknown[0] if unknown else args.runs!r}; choose from {', '.join(RUNS)}")
    if args.steps < 1 or args.max_images < 1:
        raise SystemExit("--steps and --max-images must be >= 1")
    from vqldm.evaluation.features import load_feature_extractor

    load_feature_extractor(args.features)  # fail before training when the feature network is missing

    out = args.out / f"steps{args.steps}"
    load_before = os.getloadavg()[0]
    rows, calibration, setup = [], None, None
    for name in names:
        t0 = time.time()
        metrics, reused = train(name, out / name, args)
        report = evaluate(out / name, args)
        rows.append(row(name, metrics, report))
        if calibration is None:
            calibration, setup = report["calibration"], report["calibration_setup"]
        elif [round(c["fd"], 6) for c in report["calibration"]] != [round(c["fd"], 6) for c in calibration]:
            print(f"warning: the calibration of {name} differs from the first run's; its rFID is on another scale", flush=True)
        r = rows[-1]
        print(f"{name}: PSNR {r['psnr']:.2f} dB, rFID {r['rfid']:.2f}, usage {r['usage']:.1f}%"
              f"{' (training reused)' if reused else ''}; {time.time() - t0:.0f} s wall", flush=True)

    from vqldm.autoencoder.config import load_autoencoder_config
    from vqldm.evaluation.calibration import format_calibration

    cfg = load_autoencoder_config(out / names[0] / "config.yaml")
    n, f = rows[0]["images"], cfg.model.downsampling_factor
    side = cfg.data.image_size
    print()
    print(f"Codebook capacity: preset {args.config!r} ({cfg.model.block_out_channels}, f{f}, "
          f"{side}x{side} -> {side // f}x{side // f} latents), {args.steps} steps x batch {cfg.train.batch_size} for every run, "
          f"lr {cfg.train.lr:g} ({cfg.train.lr_schedule}, warm-up {cfg.train.warmup_steps}); {args.data} held-out split, {n} images per run")
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), one run at a time; "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"rFID: `vqldm evaluate autoencoder --features {args.features} --max-images {args.max_images}` "
          f"({n} reconstructions vs their originals). Calibration, the same for every run:")
    print(format_calibration(calibration, setup, indent=""))
    print()
    print_table(rows, calibration)
    path = plot(rows, calibration, args.plot,
                f"{args.config}, {args.steps} steps per run, {n} held-out images; rFID in {args.features} features")
    print(f"\nplot: {path}")
    args.out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"steps": args.steps, "features": args.features, "images": n,
                                                   "calibration": calibration, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)
