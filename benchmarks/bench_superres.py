"""4x super-resolution on Fashion-MNIST: PSNR and rFID of a vqldm super-resolution model against bicubic
upscaling, with the autoencoder's reconstruction (the ceiling) and calibration rows.

    OMP_NUM_THREADS=1 python benchmarks/bench_superres.py --out bench_out/superres

1. trains a super-resolution model (``vqldm train-diffusion --config fashion-mnist-sr``: the latent UNet sees
   each image downsampled to the latent grid concatenated to its input) on the latents of the shipped
   model's autoencoder (32x32 -> 4x8x8), so 8x8 in, 32x32 out; or reuses ``--model RUN``;
2. takes the first ``--num-images`` held-out (test-split) images and makes their low-resolution inputs
   exactly as training does (:func:`vqldm.latents.cache.downsample`: antialiased bicubic to 8x8);
3. upscales them with bicubic interpolation (8 -> 32), with the model (DDIM at each ``--sample-steps``,
   the same initial noise at every step count), and, as the ceiling of anything decoded through this VQ
   decoder, reconstructs the real images through the autoencoder;
4. reports PSNR, SSIM (against the real image each output was made from) and rFID (Fréchet distance to
   the same real images in vqldm's default features, ``fashion-mnist-detail``), with the calibration rows
   ``vqldm evaluate autoencoder`` prints (real-vs-real floor: as many other held-out images; the real
   images blurred by 0.5 / 1 px and with noise std 0.1, paired, as the outputs are) and where each row
   falls among them.

Training is reused when ``OUT/sr/pipeline`` exists (its seconds come from the run that made it);
``OUT/report.json`` holds the table and the conditions, ``OUT/samples.png`` the first 16 of each row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py

from common import add_seed_and_threads, cpu_name, prepare_out, run_main  # noqa: E402

DEFAULT_AUTOENCODER = Path(__file__).resolve().parent.parent / "pipelines" / "default_model" / "vqvae"


def bicubic_upscale(low: torch.Tensor, size) -> torch.Tensor:
    """[-1, 1] B x c x h x w images -> B x c x size, bicubic (no antialiasing: it only matters when shrinking),
    clamped to [-1, 1] as every other row's images are."""
    return F.interpolate(low.float(), size=tuple(size), mode="bicubic", align_corners=False).clamp(-1, 1)


def quality(outputs: torch.Tensor, real: torch.Tensor) -> dict:
    """Mean per-image PSNR (dB, [0, 1] range) and SSIM of ``outputs`` against the ``real`` images they were made from."""
    from vqldm.autoencoder.metrics import psnr, ssim

    return {"psnr": float(psnr(outputs.float(), real.float()).mean()), "ssim": float(ssim(outputs.float(), real.float()).mean())}


def label(method: str, steps: int | None) -> str:
    return method if steps is None else f"{method} {steps} steps"


def format_table(rows: list[dict]) -> str:
    """One line per row: method, steps, PSNR, SSIM, rFID and where the rFID falls on the calibration scale."""
    head = f"{'method':<26} {'steps':>5} {'PSNR dB':>8} {'SSIM':>7} {'rFID':>9}  on the calibration scale"
    lines = [head, "-" * len(head)]
    for r in rows:
        steps = f"{r['steps']}" if r.get("steps") is not None else "-"
        psnr = f"{r['psnr']:.2f}" if r.get("psnr") is not None else "-"
        ssim = f"{r['ssim']:.4f}" if r.get("ssim") is not None else "-"
        lines.append(f"{r['method']:<26} {steps:>5} {psnr:>8} {ssim:>7} {r['rfid']:>9.3f}  {r.get('scale', '')}".rstrip())
    return "\n".join(lines)


def run_cli(args: list[str], log: Path, env: dict) -> None:
    """``python -m vqldm ARGS`` with its output in ``log``; a failure prints the log's tail and stops."""
    print("$ vqldm " + " ".join(args), flush=True)
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "vqldm", *args], stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise SystemExit(f"vqldm {args[0]} failed (exit {proc.returncode}); log {log}:\n" + "\n".join(tail))
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(("train-diffusion:", "done")):
            print("  " + line, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench_out/superres"))
    p.add_argument("--model", type=Path, default=None, help="a trained super-resolution run (or its pipeline/ folder) to reuse")
    p.add_argument("--autoencoder", type=Path, default=DEFAULT_AUTOENCODER, help="default: the shipped model's vqvae")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--config", default="fashion-mnist-sr")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="passed to train-diffusion (repeatable)")
    p.add_argument("--num-images", type=int, default=2000, help="held-out images per row and in the calibration (default 2000)")
    p.add_argument("--sample-steps", default="10,25,50", help="DDIM steps, comma-separated (default 10,25,50)")
    p.add_argument("--features", default=None, help="feature network (default: vqldm's default, fashion-mnist-detail)")
    p.add_argument("--batch-size", type=int, default=250)
    add_seed_and_threads(p, "the training process")
    args = p.parse_args(argv)
    step_counts = [int(s) for s in args.sample_steps.split(",") if s.strip()]
    out = args.out
    env = prepare_out(out, args.threads)
    phases_file = out / "phases.json"
    seconds = json.loads(phases_file.read_text()) if phases_file.is_file() else {}
    print(f"CPU: {cpu_name()}; torch threads: {args.threads}; torch {torch.__version__}", flush=True)

    def phase(name: str, work, reuse: bool = False):
        if reuse:
            took = f"{seconds[name]:.0f} s in the run that made it" if name in seconds else "its seconds unknown"
            print(f"[{name}] reused ({took})", flush=True)
            return None
        t0 = time.perf_counter()
        result = work()
        seconds[name] = time.perf_counter() - t0
        phases_file.write_text(json.dumps(seconds, indent=1))
        print(f"[{name}] {seconds[name]:.0f} s", flush=True)
        return result

    # ------------------------------------------------------------------ 1. the super-resolution model
    if args.model is not None:
        folder = args.model / "pipeline" if (args.model / "pipeline").is_dir() else args.model
        seconds.pop("train", None)
    else:
        run = out / "sr"
        folder = run / "pipeline"
        train_args = ["train-diffusion", "--config", args.config, "--autoencoder", str(args.autoencoder), "--data", args.data,
                      "--out", str(run), "--set", f"train.seed={args.seed}", "--set", "train.progress=false",
                      "--set", "data.num_workers=0", "--set", f"cache.folder={out / 'latent_cache'}",
                      "--set", "cache.holdout_max_images=64",  # the run's grids need a few; the benchmark reads its own
                      *(["--max-steps", str(args.steps)] if args.steps else []), *[a for kv in args.set for a in ("--set", kv)]]
        phase("train", lambda: run_cli(train_args, out / "train.log", env), reuse=(folder / "model_index.json").is_file())

    from vqldm.evaluation import metrics
    from vqldm.evaluation.calibration import add_gaussian_noise, calibration_rows, calibration_setup, gaussian_blur, place_on_scale
    from vqldm.evaluation.features import load_feature_extractor
    from vqldm.evaluation.plots import plot_image_rows
    from vqldm.evaluation.reconstruction import reconstruct
    from vqldm.evaluation.reference import load_reference_data, other_real_images
    from vqldm.latents.cache import downsample
    from vqldm.pipelines.pipeline import load_pipeline
    from vqldm.pipelines.superres_pipeline import VQSuperResolutionPipeline

    pipe = load_pipeline(folder, device="cpu")
    if not isinstance(pipe, VQSuperResolutionPipeline):
        from vqldm.plumbing.errors import UserError

        raise UserError(f"{str(folder)!r} is not a super-resolution pipeline (train one with --set model.superresolution=true)")
    pipe.set_progress_bar_config(disable=True)
    info = pipe.info
    data_cfg = info.get("training_config", {}).get("data", {})
    size, channels = int(info["image_size"]), int(info["channels"])
    factor = pipe.upscale_factor
    low_size = (size // factor, size // factor)

    # ------------------------------------------------------------------ 2. held-out images and their inputs
    def load():
        ds = load_reference_data(args.data, size, channels, data_cfg.get("fit", "pad"), progress=False)
        n = min(args.num_images, len(ds.holdout))
        real = ds.holdout.batch(torch.arange(n))[0].float()
        probe, probe_desc = other_real_images(ds, torch.arange(n), n, args.seed, train_when_short=True)
        return real, probe, probe_desc

    real, probe, probe_desc = phase("load data", load)
    n = real.shape[0]
    low = downsample(real, low_size)  # exactly the training inputs (latents/cache.py)
    extractor = load_feature_extractor(args.features, args.batch_size)
    real_f = phase("features (real)", lambda: extractor(real))
    outputs: dict[str, torch.Tensor] = {}
    rows: list[dict] = []

    def add_row(method: str, images: torch.Tensor, steps: int | None = None) -> None:
        outputs[label(method, steps)] = images
        rows.append({"method": method, "steps": steps, **quality(images, real),
                     "rfid": metrics.fid_from_features(real_f, extractor(images))})

    # ------------------------------------------------------------------ 3. the upscalers
    phase("bicubic", lambda: add_row("bicubic", bicubic_upscale(low, (size, size))))
    phase("autoencoder", lambda: add_row("autoencoder (ceiling)", reconstruct(pipe.vqvae, real, args.batch_size, "cpu", False)))
    for k in step_counts:
        def upscale(k=k):
            parts = []
            for start in range(0, n, args.batch_size):
                g = torch.Generator().manual_seed(args.seed * 1_000_003 + start)  # the same noise at every step count
                images = pipe(image=low[start:start + args.batch_size], num_inference_steps=k, generator=g, output_type="pt").images
                parts.append(images.float() * 2 - 1)  # [0, 1] -> [-1, 1]
            add_row("super-resolution DDIM", torch.cat(parts), k)
        phase(f"super-resolution {k} steps", upscale)

    # ------------------------------------------------------------------ 4. calibration, table, report
    calibration = phase("calibration", lambda: calibration_rows(real, probe, extractor, ref_features=real_f, paired=True, seed=args.seed)
                        if probe is not None else [])
    setup = calibration_setup(f"the {n} held-out originals", probe_desc, paired=True)
    for r in rows:
        r["scale"] = place_on_scale(r["rfid"], calibration)
    calib_images = {f"blur {s:g}px": gaussian_blur(real, s) for s in setup["blur_sigmas_px"]}
    calib_images[f"noise std {setup['noise_std']:g}"] = add_gaussian_noise(real, setup["noise_std"], args.seed)
    calib_rows = []
    for c in calibration:  # the same images calibration_rows measured, for their PSNR / SSIM (real-vs-real is unpaired)
        q = quality(calib_images[c["name"]], real) if c["name"] in calib_images else {"psnr": None, "ssim": None}
        calib_rows.append({"method": f"calibration: {c['name']}", "steps": None, **q, "rfid": c["fd"], "n": c["n"]})

    grid_rows = [("real (held-out)", real[:16]), (f"input {low_size[0]}x{low_size[1]} (nearest, for display)",
                 F.interpolate(low[:16], size=(size, size), mode="nearest"))]
    grid_rows += [(label(r["method"], r["steps"]), outputs[label(r["method"], r["steps"])][:16]) for r in rows]
    plot_image_rows(grid_rows, out / "samples.png", nrow=16)

    best = min((r for r in rows if r["method"].startswith("super")), key=lambda r: r["rfid"], default=None)
    bicubic = next(r for r in rows if r["method"] == "bicubic")
    print()
    print(f"4x super-resolution ({low_size[0]}x{low_size[1]} -> {size}x{size}) on the first {n} held-out {args.data} images; "
          f"model {folder}; rFID vs those {n} originals, {extractor.name} features ({extractor.dim}-d)")
    print(format_table(rows + calib_rows))
    print(f"calibration rows: rFID vs the same {n} originals; real-vs-real: {setup['real_vs_real']}; blur (Gaussian, reflect) "
          f"and noise (std {setup['noise_std']:g}, clamped) of those originals (paired, as every row's outputs are)")
    if best is not None:
        verdict = "beats" if best["rfid"] < bicubic["rfid"] else "does not beat"
        print(f"best super-resolution row ({best['steps']} steps, rFID {best['rfid']:.3f}) {verdict} bicubic (rFID {bicubic['rfid']:.3f}) in rFID; "
              f"PSNR {best['psnr']:.2f} vs {bicubic['psnr']:.2f} dB")
    print(f"CPU: {cpu_name()}; threads: {args.threads}")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + f"; total {sum(seconds.values()):.0f}")
    report = {"rows": rows, "calibration": calibration, "calibration_rows": calib_rows, "calibration_setup": setup,
              "images": n, "data": args.data, "model": str(folder), "features": extractor.name, "feature_dim": extractor.dim,
              "low_res": list(low_size), "image_size": size, "sample_steps": step_counts, "scheduler": type(pipe.scheduler).__name__,
              "training_step": info.get("step"), "config": args.config, "set": args.set, "cpu": cpu_name(), "threads": args.threads,
              "seconds": seconds, "command": " ".join(sys.argv)}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'report.json'} and {out / 'samples.png'}")
    return 0


if __name__ == "__main__":
    run_main(main)
