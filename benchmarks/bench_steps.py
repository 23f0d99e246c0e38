"""Benchmark 2: sampling steps vs quality — FID / KID and seconds per image for DDIM and DPM-Solver++ at
10 / 20 / 50 steps, for one pipeline (default: the model shipped with vqldm).

    python benchmarks/bench_steps.py --num-samples 1000 --plot docs/fid_vs_steps.png
    python benchmarks/bench_steps.py --model RUN/pipeline --steps 2,4 --num-samples 100   # smoke run

FID and KID use domain features (``--features``) against the same held-out real images for every row;
the sample counts are printed with the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py

from common import run_main  # noqa: E402

import torch  # noqa: E402



def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="pipeline folder (default: the shipped model)")
    p.add_argument("--data", default="fashion-mnist", help="dataset whose held-out split is the reference")
    p.add_argument("--features", default="fashion-mnist-detail")
    p.add_argument("--schedulers", default="ddim,dpm,unipc", help="comma-separated: ddim, dpm (DPM-Solver++), unipc, euler, ddpm")
    p.add_argument("--steps", default="8,10,20,50", help="comma-separated step counts")
    p.add_argument("--num-samples", type=int, default=1000, help="generated images per row (and real images)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance (class-conditional models; default: the model's default_guidance, else 1)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, help="write the FID-vs-steps plot to this PNG")
    p.add_argument("--json", default=None, help="write the rows to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from vqldm.plumbing.checkpoint import atomic_write_json
    from vqldm.cli.evaluate import parse_ints
    from vqldm.evaluation.generation import format_sweep_table, pipeline_data_fit, sweep_steps
    from vqldm.pipelines.sampler import load_sampler
    from vqldm.evaluation.reference import load_reference_data, real_images
    from vqldm.evaluation.report import resolve_device
    from vqldm.evaluation.plots import plot_steps_sweep
    from vqldm.evaluation.features import load_feature_extractor

    progress = not args.no_progress
    steps = parse_ints(args.steps, "--steps")
    schedulers = [s.strip() for s in args.schedulers.split(",") if s.strip()]
    device = resolve_device(args.device)
    extractor = load_feature_extractor(args.features, args.batch_size, device)
    pipe = load_sampler(args.model, device, freeze_unet=True)
    num_classes = pipe.num_classes or None
    if args.guidance is None:
        args.guidance = pipe.default_guidance  # the model's measured scale (1 for an unconditional one)
    size, channels = int(pipe.vqvae.config.sample_size), int(pipe.vqvae.config.in_channels)
    ds = load_reference_data(args.data, size, channels, pipeline_data_fit(pipe), progress)
    real, _ = real_images(ds.holdout, args.num_samples, args.seed)
    real_f = extractor(real, progress, "features (real)")
    rows = sweep_steps(pipe, real_f, extractor, schedulers, steps, args.num_samples, args.batch_size, args.guidance,
                       args.seed, num_classes, progress=progress)

    print(f"sampling steps vs quality: {args.model or 'shipped model'}; {ds.source} {size}x{size}; "
          f"{extractor.name} features; {args.num_samples} generated vs {real_f.shape[0]} held-out real images per row; "
          f"{'guidance ' + str(args.guidance) + '; ' if num_classes else ''}{device}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')}")
    if pipe.info.get("default_scheduler_options") and pipe.info.get("default_scheduler") in schedulers:
        print(f"{pipe.info['default_scheduler']} runs with the model's default options {pipe.info['default_scheduler_options']} "
              f"(vqldm.json); the others with the training schedule's settings")
    print(format_sweep_table(rows))
    if args.plot:
        plot_steps_sweep(rows, Path(args.plot), f"FID vs sampling steps ({args.num_samples} samples, {extractor.name})")
        print(f"plot: {args.plot}")
    if args.json:
        atomic_write_json(args.json, {"model": args.model or "shipped", "data": ds.source, "features": extractor.name,
                                      "num_real": int(real_f.shape[0]), "torch_threads": torch.get_num_threads(),
                                      "device": str(device), "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows})
        print(f"rows: {args.json}")
    return 0


if __name__ == "__main__":
    run_main(main)
