"""Stage 1 benchmark: vqldm's autoencoder vs a plain-diffusers baseline, same architecture, steps, batch.

The baseline is what a diffusers user writes today: ``VQModel`` trained with its own loss
(``decode(...).commit_loss``, i.e. the legacy VectorQuantizer: beta on the codebook side, codebook
initialised in a tiny uniform ball, no EMA, no restarts) plus the same L1 reconstruction loss, AdamW with
the same peak learning rate, warm-up and betas, and the same data order. After warm-up its rate stays
constant (the default of diffusers' training scripts); vqldm's trainer follows its preset
(``train.lr_schedule``, cosine decay in ``fashion-mnist``). ``--baseline-lr-schedule constant,cosine``
adds a baseline with the same cosine decay, to separate the schedule from the quantizer. All models are
evaluated on the whole held-out split by the same function (``autoencoder.evaluate.evaluate_reconstruction``).

    python benchmarks/bench_autoencoder.py --ours runs/ae            # evaluate a finished vqldm run
    python benchmarks/bench_autoencoder.py                           # train both here (same budget)
    python benchmarks/bench_autoencoder.py --max-steps 50 --max-images 2000   # smoke run

Prints a table: PSNR, SSIM, codebook usage %, perplexity, dead codes, training seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqldm.data.loading import BatchSampler
from vqldm.data.sources import load_datasets
from vqldm.autoencoder.evaluate import evaluate_reconstruction  # noqa: E402
from vqldm.autoencoder.losses import reconstruction_loss  # noqa: E402
from vqldm.autoencoder.model import build_vqmodel  # noqa: E402
from vqldm.plumbing.trainkit import lr_lambda  # noqa: E402
from vqldm.autoencoder.config import load_autoencoder_config
from vqldm.autoencoder.train import train_autoencoder  # noqa: E402
from diffusers import VQModel  # noqa: E402


def train_baseline(cfg, datasets, steps: int, lr_schedule: str = "constant") -> tuple[VQModel, float]:
    """The plain-diffusers loop: VQModel's own forward and commit loss, nothing else."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = build_vqmodel(cfg.model, cfg.data.image_size, cfg.data.channels)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tc.adam_betas, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.warmup_steps, lr_schedule, steps, tc.min_lr_ratio))
    batches = BatchSampler(len(datasets.train), tc.batch_size, tc.seed).batches(0)
    start = time.perf_counter()
    model.train()
    for _ in tqdm(range(steps), desc="baseline (plain diffusers)"):
        x, _ = datasets.train.batch(next(batches))
        out = model(x)
        loss = reconstruction_loss(out.sample, x, cfg.loss.reconstruction) + out.commit_loss.mean()
        loss.backward()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return model.eval(), time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="fashion-mnist")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--ours", default=None, help="a finished vqldm run folder (with vqvae/ and metrics.json); trained here if omitted")
    p.add_argument("--max-steps", type=int, default=None, help="steps for both (default: the config's)")
    p.add_argument("--max-images", type=int, default=None, help="limit the training images (smoke runs)")
    p.add_argument("--eval-images", type=int, default=None, help="limit the held-out images (default: all)")
    p.add_argument("--out", default="bench_out/autoencoder")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only-baseline", action="store_true", help="train and save the baseline(s) only (reused by the next run with the same steps)")
    p.add_argument("--baseline-lr-schedule", default="constant", metavar="constant[,cosine]",
                   help="learning-rate schedule(s) of the baseline after warm-up; one baseline row each (default constant)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = [f"data.max_images={args.max_images}"] if args.max_images else []
    cfg = load_autoencoder_config(args.config, overrides)
    if args.max_steps:
        cfg.train.max_steps = args.max_steps
    out = Path(args.out)

    ours_seconds = None
    if args.only_baseline:
        pass
    elif args.ours:
        run = Path(args.ours)
        saved = json.loads((run / "metrics.json").read_text())
        cfg = load_autoencoder_config(run / "config.yaml", overrides)
        cfg.train.max_steps = saved["step"]
        ours_seconds = saved.get("train_seconds")
    else:
        run = out / "vqldm"
        start = time.perf_counter()
        train_autoencoder(cfg, run, data=args.data, resume=False) if not (run / "vqvae").is_dir() else None
        ours_seconds = time.perf_counter() - start

    datasets = load_datasets(args.data, cfg.data, progress=False)
    steps = cfg.train.max_steps
    schedules = [x.strip() for x in args.baseline_lr_schedule.split(",") if x.strip()]
    if not schedules or any(x not in ("constant", "cosine") for x in schedules):
        sys.exit(f"error: --baseline-lr-schedule takes constant and/or cosine, got {args.baseline_lr_schedule!r}")
    baselines = {}
    for schedule in schedules:
        suffix = "" if schedule == "constant" else f"-{schedule}"
        saved_baseline = out / f"baseline-{steps}-steps{suffix}"
        if (saved_baseline / "vqvae").is_dir():  # trained by an earlier run of this script (--only-baseline)
            baseline = VQModel.from_pretrained(saved_baseline / "vqvae", use_safetensors=True).eval()
            base_seconds = json.loads((saved_baseline / "train.json").read_text())["train_seconds"]
        else:
            baseline, base_seconds = train_baseline(cfg, datasets, steps, schedule)
            baseline.save_pretrained(saved_baseline / "vqvae", safe_serialization=True)
            (saved_baseline / "train.json").write_text(json.dumps({"train_seconds": base_seconds, "steps": steps}))
        baselines["plain diffusers" + ("" if schedule == "constant" else f" ({schedule} lr)")] = (baseline, base_seconds)
        if args.only_baseline:
            print(f"baseline ({schedule} lr) trained ({steps} steps, {base_seconds:.0f} s) and saved to {saved_baseline}")
    if args.only_baseline:
        return

    ours = VQModel.from_pretrained(run / "vqvae", use_safetensors=True).eval()
    rows = {"vqldm": evaluate_reconstruction(ours, datasets.holdout, 256, "cpu", args.eval_images, progress=False)}
    rows["vqldm"]["train_seconds"] = ours_seconds
    for name, (model, seconds) in baselines.items():
        rows[name] = evaluate_reconstruction(model, datasets.holdout, 256, "cpu", args.eval_images, progress=False)
        rows[name]["train_seconds"] = seconds

    n = rows["vqldm"]["images"]
    print(f"\nStage-1 autoencoder, {args.data} held-out split ({n} images), {steps} steps x batch "
          f"{cfg.train.batch_size}, same architecture ({cfg.model.block_out_channels}, {cfg.model.codebook_size} codes); "
          f"torch threads {torch.get_num_threads()}\n")
    print("| model | PSNR (dB) | SSIM | codebook usage | perplexity | dead codes | train s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        secs = f"{r['train_seconds']:.0f}" if r.get("train_seconds") else "n/a"
        print(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['codebook_usage']:.1f}% | {r['perplexity']:.1f} | {r['dead_codes']} | {secs} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
