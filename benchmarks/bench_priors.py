"""Discrete priors vs continuous latent diffusion on one frozen tokenizer, at equal size and training time.

    python benchmarks/bench_priors.py --device cuda --budget 75          # the figures in docs/results.md
    python benchmarks/bench_priors.py --device cpu --quick               # smoke run (tiny presets, seconds)

Three generators are trained from the command line on the same frozen autoencoder (default: the vqvae
of the shipped model) and the same data, for the same wall-clock training time on the same device:
continuous latent diffusion (`vqldm train-diffusion`, preset `fashion-mnist`), the masked prior and the
autoregressive prior (`vqldm train-prior --kind ...`, preset `fashion-mnist`, one transformer, causal or
not). Their parameter counts are printed and must lie within 20% of each other. Equal time: a short probe
runs (N and 2N steps, whose difference cancels fixed costs) measure each model's steps per second on this
device; the real run's learning-rate schedule is sized to 1.1 x budget x steps/s steps, and
``train.max_seconds`` stops every run when its training clock reaches the budget. The seconds each run actually trained are printed next to the budget.

Each model is then sampled at a sweep of steps (masked: 1-16 decoding rounds; continuous: 5-50 steps of
UniPC with trailing timesteps, vqldm's measured default for this model family; autoregressive: one step
per code), with the same guidance, class-balanced
labels and seeds, and scored by Frechet distance in the domain classifier's features against held-out real
images, with the calibration rows (real-vs-real floor, blur 0.5/1 px, noise) of ``vqldm evaluate`` at the
same sample count, by class accuracy (the domain classifier recognising the requested class, and the same
classifier on real images), and by seconds per image. Prints the table and writes FD vs seconds per image
to ``OUT/fd_vs_seconds.png`` (+ ``OUT/result.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_name  # noqa: E402


def cli(args: list[str], env: dict) -> None:
    proc = subprocess.run([sys.executable, "-m", "vqldm", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_priors: `vqldm {' '.join(args[:3])} ...` failed:\n{proc.stderr[-3000:]}")


MODELS = {  # name -> (command, extra arguments)
    "continuous": ("train-diffusion", []),
    "masked": ("train-prior", ["--kind", "masked"]),
    "autoregressive": ("train-prior", ["--kind", "autoregressive"]),
}


def train(name: str, out: Path, args, env: dict, max_steps: int, extra: list[str], seconds: float | None = None) -> dict:
    command, kind = MODELS[name]
    preset = "tiny" if args.quick else "fashion-mnist"
    cli([command, *kind, "--config", preset, "--autoencoder", str(args.autoencoder), "--data", args.data, "--out", str(out),
         "--max-steps", str(max_steps), "--set", f"cache.folder={args.work / 'cache'}", "--set", "train.progress=false",
         "--set", f"train.checkpoint_every={max_steps}", "--set", f"train.image_every={max_steps}",
         "--set", "train.num_sample_images=2", *(["--set", f"train.max_seconds={seconds}"] if seconds else []), *extra], env)
    return json.loads((out / "metrics.json").read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--autoencoder", default=None, help="frozen autoencoder (default: the shipped model's vqvae)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--budget", type=float, default=75.0, help="training seconds per model")
    p.add_argument("--probe-steps", type=int, default=60, help="steps of the speed probe run")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--masked-steps", default="1,2,4,8,16")
    p.add_argument("--continuous-steps", default="5,10,20,50")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny presets and few samples (tests)")
    p.add_argument("--work", default="bench_out/priors", help="run folders and results")
    args = p.parse_args(argv)
    args.work = Path(args.work).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    from vqldm.pipelines.default_model import DEFAULT_MODEL_DIR

    args.autoencoder = Path(args.autoencoder or DEFAULT_MODEL_DIR)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    extra = ["--set", "data.max_images=512", "--set", "cache.holdout_max_images=64"] if args.quick else []
    print(f"bench_priors {time.strftime('%Y-%m-%d %H:%M')}: device {args.device}"
          + (f" ({torch.cuda.get_device_name(0)})" if args.device == "cuda" else "")
          + f", CPU {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"autoencoder {args.autoencoder}; budget {args.budget:g} s of training per model")

    # ---------------------------------------------------------------- equal-time training
    runs = {}
    for name in MODELS:
        # two probes, N and 2N steps: their difference cancels the fixed costs in the training clock (first
        # steps, the final sample grid), which dominate short runs on a GPU
        short = train(name, args.work / f"probe-{name}", args, env, args.probe_steps, extra)
        long = train(name, args.work / f"probe2-{name}", args, env, 2 * args.probe_steps, extra)
        steps_per_s = args.probe_steps / max(long["session_seconds"] - short["session_seconds"], 1e-3)
        # a schedule sized for the budget from the probe's rate; the clock (train.max_seconds) ends every run at
        # the same training time, whichever way the probe erred
        steps = max(2, int(1.1 * args.budget * steps_per_s) // 2 * 2)
        metrics = train(name, args.work / name, args, env, steps, extra, seconds=args.budget)
        steps = metrics["step"]
        runs[name] = {"steps": steps, "probe_steps_per_s": steps_per_s, "train_seconds": metrics["train_seconds"],
                      "parameters": metrics["parameters"], "final_loss": metrics["final_loss"]}
        print(f"  trained {name:<15s} {metrics['parameters'] / 1e6:.2f}M parameters, {steps} steps in {metrics['train_seconds']:.1f} s "
              f"(budget {args.budget:g} s; probe {steps_per_s:.1f} steps/s), final loss {metrics['final_loss']:.4f}")
    sizes = [r["parameters"] for r in runs.values()]
    print(f"  parameter counts within {100 * (max(sizes) / min(sizes) - 1):.1f}% of each other (limit 20%)")

    # ---------------------------------------------------------------- evaluation
    import vqldm.evaluation.calibration as cal
    import vqldm.evaluation.generation as gen
    from vqldm.pipelines.sampler import load_sampler
    import vqldm.evaluation.reference as ref
    from vqldm.evaluation.features import load_feature_extractor
    from vqldm.evaluation.metrics import distribution_metrics

    device = torch.device(args.device)
    extractor = load_feature_extractor(None, args.batch_size, device)
    pipes = {"continuous": load_sampler(args.work / "continuous" / "pipeline", device, freeze_unet=True)}
    # the continuous model samples with vqldm's measured default sampler for this model family (docs/results.md)
    pipes["continuous"].set_scheduler("unipc", timestep_spacing="trailing")
    pipes["continuous"].info["default_steps"] = 10
    for name in ("masked", "autoregressive"):
        pipes[name] = load_sampler(args.work / name / "prior", device)
    any_pipe = pipes["continuous"]
    size, channels = int(any_pipe.vqvae.config.sample_size), int(any_pipe.vqvae.config.in_channels)
    ds = ref.load_reference_data(args.data, size, channels, gen.pipeline_data_fit(any_pipe), progress=False)
    idx = ref.real_indices(len(ds.holdout), args.num_samples, args.seed)
    real, real_labels = ds.holdout.batch(idx)
    real_f = extractor(real)
    probe, probe_desc = ref.other_real_images(ds, idx, real.shape[0], args.seed)
    calibration = cal.calibration_rows(real, probe, extractor, ref_features=real_f, seed=args.seed)
    real_acc = float((extractor.classify(real) == real_labels).float().mean())
    n_real = real.shape[0]
    print(f"evaluation: {args.num_samples} generated images per setting vs {n_real} held-out real images "
          f"({extractor.name} features); guidance {args.guidance}; classifier accuracy on real images {100 * real_acc:.1f}%")
    print("  calibration (same features and counts): " + ", ".join(f"{r['name']} {r['fd']:.2f}" for r in calibration))

    sweeps = {"continuous": [int(s) for s in args.continuous_steps.split(",")],
              "masked": [int(s) for s in args.masked_steps.split(",")],
              "autoregressive": [None]}
    rows = []
    for name, steps_list in sweeps.items():
        pipe = pipes[name]
        num_classes = pipe.num_classes or None
        gen.warm_up(pipe, args.batch_size, args.guidance, num_classes)
        for steps in steps_list:
            fake, labels, spi = gen.generate_images(pipe, args.num_samples, args.batch_size, steps, args.guidance, args.seed,
                                                num_classes, progress=False)
            m = distribution_metrics(real_f, extractor(fake), with_pr=False, kid_subsets=10, kid_subset_size=min(1000, args.num_samples))
            acc = float((extractor.classify(fake) == labels).float().mean()) if labels is not None else None
            shown_steps = steps if steps is not None else int(pipe.info.get("default_steps") or 0)
            rows.append({"model": name, "steps": shown_steps, "fd": m["fid"], "fd_scale": cal.place_on_scale(m["fid"], calibration),
                         "class_accuracy": acc, "class_accuracy_vs_real": acc / real_acc if acc is not None else None,
                         "seconds_per_image": spi, "parameters": runs[name]["parameters"]})

    print(f"{'model':<15s} {'params':>7s} {'steps':>5s} {'FD':>8s} {'class acc':>9s} {'vs real':>7s} {'ms/image':>9s}  FD on the calibration scale")
    for r in rows:
        print(f"{r['model']:<15s} {r['parameters'] / 1e6:6.2f}M {r['steps']:5d} {r['fd']:8.3f} {100 * r['class_accuracy']:8.1f}% "
              f"{r['class_accuracy_vs_real']:7.3f} {1000 * r['seconds_per_image']:9.3f}  {r['fd_scale']}")

    # the acceptance line: the masked prior at <= 8 steps against the continuous model at its default sampler
    default_steps = int(pipes["continuous"].info.get("default_steps") or 50)
    cont = min((r for r in rows if r["model"] == "continuous"), key=lambda r: abs(r["steps"] - default_steps))
    masked = [r for r in rows if r["model"] == "masked" and r["steps"] <= 8]
    best = min(masked, key=lambda r: r["fd"]) if masked else None
    if best:
        verdict = "reaches" if best["fd"] <= cont["fd"] else f"misses by {best['fd'] - cont['fd']:.3f} FD ({best['fd'] / cont['fd']:.2f}x)"
        print(f"masked prior at <= 8 steps (best: {best['steps']} steps, FD {best['fd']:.3f}, {1000 * best['seconds_per_image']:.3f} ms/image) "
              f"{verdict} the continuous model at its default sampler ({cont['steps']} steps, FD {cont['fd']:.3f}, "
              f"{1000 * cont['seconds_per_image']:.3f} ms/image): time ratio {best['seconds_per_image'] / cont['seconds_per_image']:.2f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, marker in zip(MODELS, "osD"):
        pts = sorted((r["seconds_per_image"] * 1000, r["fd"], r["steps"]) for r in rows if r["model"] == name)
        ax.plot([q[0] for q in pts], [q[1] for q in pts], marker=marker, label=name)
        for x, y, s in pts:
            ax.annotate(str(s), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    for r in calibration:  # the scale: grey lines labelled at the right edge
        ax.axhline(r["fd"], color="grey", lw=0.7, ls="--")
        ax.annotate(f"{r['name']} ({r['fd']:.2g})", (1.0, r["fd"]), xycoords=("axes fraction", "data"), xytext=(-2, 2),
                    textcoords="offset points", ha="right", fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"ms per image ({args.device})")
    ax.set_ylabel("Frechet distance (domain features)")
    ax.set_title(f"equal size and training time ({args.budget:g} s each); labels: steps", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.work / "fd_vs_seconds.png", dpi=110)
    (args.work / "result.json").write_text(json.dumps({"runs": runs, "rows": rows, "calibration": calibration,
                                                      "real_class_accuracy": real_acc, "device": args.device,
                                                      "budget_seconds": args.budget, "probe": probe_desc}, indent=2) + "\n")
    print(f"plot: {args.work / 'fd_vs_seconds.png'}; table: {args.work / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
