"""Fine-tuning a trained autoencoder on a new folder against training it from scratch: held-out rFID by training seconds (issue 20).

    pip install scikit-image                              # benchmark-only (the photos of the new folder)
    python benchmarks/bench_finetune.py --out bench_out/finetune     # ~25 minutes on one busy core

The new folder is benchmarks/make_colour_folder.py's crops of scikit-image's photos (not Fashion-MNIST),
read as 32 px grayscale (PIL's ITU-R 601 luma; shorter side resized, then centre-cropped). Two runs of
`vqldm train-autoencoder` with the same preset, steps, seed and data, one thread each: (a) from scratch,
(b) `--init` the shipped model's autoencoder (Fashion-MNIST, 32 px grayscale, f4, 256 codes; the preset
`fashion-mnist` has its architecture, checked below, so (a) trains the same network from noise). Each
run keeps a checkpoint every `--every` steps; afterwards every checkpoint, and the init itself at step 0,
is measured with `vqldm evaluate autoencoder`'s function (rFID of reconstructions vs originals in the
shipped detail-sensitive features, with its calibration rows) on the same held-out images of the folder
(the stable per-file split, `data.holdout_fraction` 0.05, that the trainer and the evaluator both use).
Seconds are the runs' own training seconds (`state.json` of each checkpoint: the loop only, so start-up,
the folder index and evaluation are not counted).

The headline: the target rFID is the scratch run's final one; for each run, the training seconds (and
steps) of the first evaluated point at or below it (no interpolation). The same is read for the scratch
run's best rFID and its final PSNR (rFID on ~300 images moves by tens between neighbouring checkpoints).
Prints markdown tables and writes OUT/finetune.json. Runs and evaluations that finished before are reused
(delete OUT/runs/NAME to redo a run; its evaluations are redone with it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import cpu_name, run_main  # noqa: E402
from make_colour_folder import make_folder  # noqa: E402

REPO = HERE.parent
SHIPPED_VQVAE = REPO / "pipelines" / "default_model" / "vqvae"
DATA_SETS = ["data.channels=1", "data.image_size=32", "data.fit=resize", "data.holdout_fraction=0.05", "data.num_workers=0"]
TRAIN_SETS = ["train.scaling_max_images=1000"]  # the exported scaling factor plays no part here; fewer images, less wall time
ARCHITECTURE = {  # preset model.* key -> the VQModel config key it becomes
    "block_out_channels": "block_out_channels", "layers_per_block": "layers_per_block", "latent_channels": "latent_channels",
    "vq_embed_dim": "vq_embed_dim", "codebook_size": "num_vq_embeddings", "norm_num_groups": "norm_num_groups",
    "mid_block_add_attention": "mid_block_add_attention",
}


def check_same_architecture(config: str, init: Path) -> None:
    """The scratch run must train the init's network: every model.* key of the preset equals the init's."""
    from vqldm.autoencoder.config import load_autoencoder_config
    from dataclasses import asdict

    model = asdict(load_autoencoder_config(config).model)
    published = json.loads((init / "config.json").read_text())
    differ = {k: (model[k], published.get(v)) for k, v in ARCHITECTURE.items() if model[k] != published.get(v)}
    if differ:
        raise SystemExit(f"preset {config!r} is not the init's architecture (preset, init): {differ}")


def disc_schedule(steps: int, start: int, ramp: int) -> tuple[int, int]:
    """The adversarial term's start and ramp for a run of ``steps``, by ``--config auto``'s rule
    (autoencoder/config.py choose_autoencoder): on after half the run at the latest, full by three quarters."""
    start = min(start, steps // 2)
    return start, min(ramp, max(0, (3 * steps) // 4 - start))


def train(name: str, config: str, data: Path, run: Path, steps: int, every: int, seed: int, threads: int,
          extra: list[str], init: Path | None) -> None:
    """One `vqldm train-autoencoder` run with a checkpoint every ``every`` steps (all kept); reused when done."""
    if (run / "metrics.json").is_file():
        print(f"{name}: reusing {run}", flush=True)
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    sets = [*DATA_SETS, *TRAIN_SETS, *extra, f"train.seed={seed}", f"train.checkpoint_every={every}",
            f"train.keep_checkpoints={steps // every + 1}", "train.progress=false"]
    cmd = [sys.executable, "-m", "vqldm", "train-autoencoder", "--config", config, "--data", str(data), "--out", str(run),
           "--max-steps", str(steps), *[a for s in sets for a in ("--set", s)]]
    if init is not None:
        cmd += ["--init", str(init)]
    if run.exists():
        cmd.append("--resume")
    print("+ vqldm " + " ".join(cmd[3:]), flush=True)
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    # how busy the machine was: training seconds depend on it (the other processes on these cores)
    (run / "bench.json").write_text(json.dumps({"load_before": load, "load_after": os.getloadavg()[0]}))
    print("\n".join(f"  {line}" for line in proc.stdout.splitlines() if line.startswith(("init:", "done:"))), flush=True)


def checkpoint_model(run: Path, ckpt: Path):
    """The VQModel of checkpoint ``ckpt`` of ``run``: the run's exported architecture with the checkpoint's
    weights (``vqmodel.*`` of the training wrapper)."""
    from diffusers import VQModel

    from vqldm.plumbing.checkpoint import load_training_checkpoint

    files, _ = load_training_checkpoint(ckpt)
    vq = VQModel.from_pretrained(run / "vqvae", use_safetensors=True)
    weights = {k.removeprefix("vqmodel."): v for k, v in files["model"].items() if k.startswith("vqmodel.")}
    vq.load_state_dict(weights, strict=True)
    return vq.eval().requires_grad_(False)


def measure(load_model, made: Path, source: Path, out: Path, extractor, max_images: int, held_out: int) -> dict:
    """``vqldm evaluate autoencoder``'s report for the model ``load_model()`` gives on the folder's held-out
    images (fit resize, as trained); an ``out/report.json`` newer than ``made`` (the model's file) is reused."""
    from vqldm.autoencoder.model import LoadedAutoencoder
    from vqldm.evaluation.reconstruction import evaluate_autoencoder

    path = out / "report.json"
    if path.is_file() and path.stat().st_mtime >= made.stat().st_mtime:
        report = json.loads(path.read_text())
    else:
        report = evaluate_autoencoder(LoadedAutoencoder(load_model(), out, None, None), str(source), out, features=extractor,
                                      num_images=max_images, fit="resize", progress=False)
    if report["images"] != held_out:  # the evaluator's held-out split must be the trainer's
        raise SystemExit(f"evaluated {report['images']} held-out images, the runs held out {held_out}")
    return report


def first_reaching(points: list[dict], key: str, target: float, lower_is_better: bool) -> dict | None:
    """The first evaluated point whose ``key`` is at or better than ``target`` (None: never)."""
    return next((p for p in points if (p[key] <= target if lower_is_better else p[key] >= target)), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out/finetune"))
    ap.add_argument("--config", default="fashion-mnist", help="autoencoder preset of both runs (default fashion-mnist)")
    ap.add_argument("--init", type=Path, default=SHIPPED_VQVAE, help="the trained VQModel folder to fine-tune (default: the shipped one)")
    ap.add_argument("--count", type=int, default=6000, help="images in the new folder (5%% held out: ~300)")
    ap.add_argument("--steps", type=int, default=320, help="training steps of each run")
    ap.add_argument("--every", type=int, default=40, help="steps between evaluated checkpoints")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-images", type=int, default=2000, help="held-out images evaluated (all of them when fewer)")
    args = ap.parse_args()
    if args.steps % args.every:
        raise SystemExit(f"--steps {args.steps} must be a multiple of --every {args.every}")

    import torch

    torch.set_num_threads(args.threads)
    from vqldm.autoencoder.config import load_autoencoder_config
    from vqldm.autoencoder.model import load_vqvae
    from vqldm.evaluation.features import load_feature_extractor
    from vqldm.plumbing.checkpoint import list_checkpoints

    check_same_architecture(args.config, args.init)
    folder = args.out / "colour_folder"
    if not folder.is_dir():
        make_folder(folder, args.count, seed=args.seed)
    loss = load_autoencoder_config(args.config).loss
    start, ramp = disc_schedule(args.steps, loss.disc_start, loss.disc_ramp_steps)
    extra = [f"loss.disc_start={start}", f"loss.disc_ramp_steps={ramp}"]
    runs = {"scratch": (args.out / "runs" / "scratch", None), "fine-tune": (args.out / "runs" / "finetune", args.init)}
    for name, (run, init) in runs.items():
        train(name, args.config, folder, run, args.steps, args.every, args.seed, args.threads, extra, init)

    extractor = load_feature_extractor(None, 100, "cpu")
    metrics = {name: json.loads((run / "metrics.json").read_text()) for name, (run, _) in runs.items()}
    held_out = metrics["scratch"]["holdout"]["images"]
    if metrics["fine-tune"]["holdout"]["images"] != held_out:
        raise SystemExit("the two runs held out different images")
    keep = ("rfid", "psnr", "ssim")
    init_weights = next(args.init.glob("*.safetensors"))
    init_report = measure(lambda: load_vqvae(args.init).vqvae, init_weights, folder, args.out / "eval" / "init", extractor,
                          args.max_images, held_out)
    points = {"scratch": [], "fine-tune": [{"step": 0, "seconds": 0.0, **{k: init_report[k] for k in keep},
                                            "codes_used": init_report["codebook"]["codes_used"]}]}
    for name, (run, _) in runs.items():
        for ckpt in list_checkpoints(run):
            state = json.loads((ckpt / "state.json").read_text())
            step, seconds = int(state["step"]), float(state["train_seconds"])
            report = measure(lambda: checkpoint_model(run, ckpt), ckpt / "state.json", folder,
                             args.out / "eval" / f"{run.name}-{step:06d}", extractor, args.max_images, held_out)
            points[name].append({"step": step, "seconds": seconds, **{k: report[k] for k in keep},
                                 "codes_used": report["codebook"]["codes_used"]})
            print(f"  {name} step {step}: rFID {report['rfid']:.2f}", flush=True)

    # the target is the scratch run's final rFID; two more are read the same way, as rFID moves by tens between
    # neighbouring checkpoints here: the scratch run's best rFID and its (steadier) final PSNR
    scratch = points["scratch"]
    targets = [("rfid", "the scratch run's final rFID", scratch[-1]["rfid"], True),
               ("rfid", "the scratch run's best rFID", min(p["rfid"] for p in scratch), True),
               ("psnr", "the scratch run's final PSNR", scratch[-1]["psnr"], False)]
    headlines = [{"metric": key, "target": what, "value": value,
                  "reached": {name: first_reaching(p, key, value, lower) for name, p in points.items()}}
                 for key, what, value, lower in targets]
    calibration = init_report["calibration"]  # the same originals, features and N for every point
    result = {
        "cpu": cpu_name(), "threads": args.threads, "config": args.config, "init": str(args.init),
        "folder": str(folder), "images": args.count, "train_images": metrics["scratch"]["train_images"], "held_out": held_out,
        "steps": args.steps, "every": args.every, "seed": args.seed, "loss_overrides": extra,
        "features": init_report["rfid_features"], "feature_dim": init_report["feature_dim"],
        "calibration": calibration, "calibration_setup": init_report["calibration_setup"],
        "points": points, "headlines": headlines,
        "steps_per_s": {name: metrics[name]["steps_per_s"] for name in runs},
        "load_average_1min": {name: json.loads((run / "bench.json").read_text()) for name, (run, _) in runs.items()},
    }
    (args.out / "finetune.json").write_text(json.dumps(result, indent=2))
    print(format_result(result, args))
    return 0


def format_result(r: dict, args) -> str:
    from vqldm.evaluation.calibration import place_on_scale

    sc, ft = r["points"]["scratch"], r["points"]["fine-tune"]
    by_step = {p["step"]: [p, None] for p in ft}
    for p in sc:
        by_step.setdefault(p["step"], [None, None])[1] = p

    def cells(p):
        return ["-", "-", "-"] if p is None else [f"{p['seconds']:.0f}", f"{p['rfid']:.2f}", f"{p['psnr']:.2f}"]

    lines = [
        f"fine-tuning vs scratch: {r['config']} preset, {r['steps']} steps, batch 64, seed {r['seed']}, "
        f"{' '.join(r['loss_overrides'])}; CPU {r['cpu']}, {r['threads']} thread(s)",
        f"new folder: {r['images']} crops of scikit-image photos at 32 px grayscale ({r['train_images']} train, "
        f"{r['held_out']} held out); init: {r['init']}",
        f"rFID: {r['held_out']} reconstructions vs their originals, {r['features']} features ({r['feature_dim']}-d); "
        f"seconds: training seconds of the run (loop only)",
        "",
        "| step | scratch s | scratch rFID | scratch PSNR | fine-tune s | fine-tune rFID | fine-tune PSNR |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for step in sorted(by_step):
        f, s = by_step[step]
        lines.append(f"| {step} | " + " | ".join(cells(s) + cells(f)) + " |")
    setup = r["calibration_setup"]
    lines += ["", f"calibration: vs {setup['reference']}; real-vs-real: {setup['real_vs_real']}; blur and noise of the "
                  f"same originals (paired)", "", "| row | rFID |", "|---|---:|"]
    lines += [f"| {c['name']} | {c['fd']:.2f} |" for c in r["calibration"]]
    lines.append("")
    for h in r["headlines"]:
        key, name = h["metric"], {"rfid": "rFID", "psnr": "PSNR"}[h["metric"]]
        where = f"; {place_on_scale(h['value'], r['calibration'])}" if key == "rfid" else ", dB"
        lines.append(f"target {name} {h['value']:.2f} ({h['target']}{where}): first evaluated point at or "
                     + ("below" if key == "rfid" else "above"))
        for run, p in h["reached"].items():
            lines.append(f"  {run:<9}: " + ("not reached" if p is None else
                                            f"step {p['step']}, {p['seconds']:.0f} training seconds ({name} {p[key]:.2f})"))
    lines.append("steps/s: " + ", ".join(f"{k} {v:.3f}" for k, v in r["steps_per_s"].items())
                 + "; 1-min load average before/after each run: "
                 + ", ".join(f"{k} {v['load_before']:.1f}/{v['load_after']:.1f}" for k, v in r["load_average_1min"].items()))
    lines.append(f"command: python benchmarks/bench_finetune.py --out {args.out} --steps {r['steps']} --every {r['every']} "
                 f"--count {r['images']} --threads {r['threads']}")
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(main)
