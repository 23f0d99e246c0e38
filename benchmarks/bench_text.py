"""Prompt matching of a text-to-image model trained on CPU: how often its images show what the prompt says.

    OMP_NUM_THREADS=1 python benchmarks/bench_text.py --out bench_out/text --count 2000 --ae-steps 800 --steps 1600

1. writes a captioned shapes folder (benchmarks/make_shapes_folder.py: one square, circle or triangle of a
   named colour, small or large, in one quadrant; "a large red circle at the top left");
2. trains the ``shapes`` autoencoder on it (``vqldm train-autoencoder``);
3. trains the ``shapes-text`` text-to-image model on its latents (``vqldm train-diffusion``: a byte-level
   T5 encoder trained from scratch with a cross-attention UNet);
4. samples every one of the 120 (colour, shape, size, position) prompts ``--per-prompt`` times at each
   guidance scale (the same initial noise at every scale) and reads each image back with
   benchmarks/shapes_checker.py (plain image processing, no learned network).

The table's rows: ``real images`` are freshly drawn images (not in the training folder) of the same
prompts, checked against their own captions: the checker's own accuracy, the ceiling of every other row;
``real, autoencoded`` the same images through the autoencoder (the ceiling of a model that samples its
latents); ``chance`` a prompt-blind model (1 / number of values; 1/120 for all four); then one row per
guidance scale. ``all`` counts an image as matching its prompt when all four attributes are right.
A CLIP-score column is added when ``transformers`` finds CLIP weights in the local Hugging Face cache.
Finished phases (output present, seconds in ``phases.json``) are reused and print the seconds of the run
that made them, so a rerun with other sampling settings (``--per-prompt``, ``--guidance``) trains nothing;
a phase stopped half-way must be deleted before a rerun. ``report.json`` in ``--out`` holds the table and
the conditions.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, make_shapes_folder.py

from common import add_seed_and_threads, cpu_name, prepare_out, run_main  # noqa: E402
from make_shapes_folder import (COLOURS, POSITIONS, SHAPES, SIZES, caption, combinations, make_folder, render,  # noqa: E402
                                sample_attributes)
from shapes_checker import ATTRIBUTES, score  # noqa: E402

CLIP_MODEL = "openai/clip-vit-base-patch32"
COLUMNS = ("all", *ATTRIBUTES)


def eval_prompts(per_prompt: int) -> list[str]:
    """Every combination's caption, ``per_prompt`` times, combination-major."""
    return [caption(c) for c in combinations() for _ in range(per_prompt)]


def real_images(per_prompt: int, seed: int, size: int) -> list[np.ndarray]:
    """Fresh images of ``eval_prompts(per_prompt)`` (own positions and noise; none of them in the training folder,
    which is drawn from ``seed``)."""
    out = []
    for i, combo in enumerate(combinations()):
        out += [render(a, size) for a in sample_attributes(per_prompt, seed=10_000 + 1_000 * seed + i, combos=[combo])]
    return out


def chance_row() -> dict[str, float]:
    n = {"colour": len(COLOURS), "shape": len(SHAPES), "size": len(SIZES), "position": len(POSITIONS)}
    return {"all": 1.0 / len(combinations()), **{k: 1.0 / v for k, v in n.items()}}


def to_uint8(images: torch.Tensor | np.ndarray) -> list[np.ndarray]:
    """B x H x W x 3 floats in [0, 1] -> uint8 images."""
    arr = np.asarray(images)
    return list(np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8))


def grid(images: list[np.ndarray], cols: int) -> Image.Image:
    h, w = images[0].shape[:2]
    rows = -(-len(images) // cols)
    canvas = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    return Image.fromarray(canvas)


def clip_scorer():
    """(score function, None) when CLIP weights are in the local Hugging Face cache, else (None, reason)."""
    try:
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(CLIP_MODEL, local_files_only=True).eval()
        processor = CLIPProcessor.from_pretrained(CLIP_MODEL, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to load means "no local weights"
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"

    @torch.inference_mode()
    def clip_score(images: list[np.ndarray], prompts: list[str]) -> float:
        """Mean CLIP score, 100 x max(cos(image, text), 0) (Hessel et al. 2021, as torchmetrics' CLIPScore)."""
        total = 0.0
        for i in range(0, len(images), 64):
            batch = processor(text=prompts[i:i + 64], images=[Image.fromarray(x) for x in images[i:i + 64]],
                              return_tensors="pt", padding=True)
            out = model(**batch)
            img = torch.nn.functional.normalize(out.image_embeds, dim=-1)
            txt = torch.nn.functional.normalize(out.text_embeds, dim=-1)
            total += float((100.0 * (img * txt).sum(-1)).clamp(min=0).sum())
        return total / len(images)

    return clip_score, None


def cpu_time() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_cli(args: list[str], log: Path, env: dict) -> None:
    """``python -m vqldm ARGS`` with its output in ``log``; a failure prints the log's tail and stops."""
    cmd = [sys.executable, "-m", "vqldm", *args]
    print("$ vqldm " + " ".join(args), flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise SystemExit(f"vqldm {args[0]} failed (exit {proc.returncode}); log {log}:\n" + "\n".join(tail))
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("done")]
    if lines:
        print("  " + lines[-1], flush=True)


def format_table(rows: list[dict], clip: bool) -> str:
    cols = [*COLUMNS, *(["clip_score"] if clip else [])]
    head = f"{'':<20}" + "".join(f"{c:>11}" for c in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = [f"{r[c]:>11.3f}" if c != "clip_score" else (f"{r[c]:>11.2f}" if r.get(c) is not None else f"{'-':>11}")
                 for c in cols]
        lines.append(f"{r['row']:<20}" + "".join(cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench_out/text"))
    p.add_argument("--count", type=int, default=2000, help="training images (default 2000)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--ae-steps", type=int, default=800, help="autoencoder training steps (default 800)")
    p.add_argument("--steps", type=int, default=1600, help="text model training steps (default 1600)")
    p.add_argument("--ae-config", default="shapes")
    p.add_argument("--config", default="shapes-text")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="passed to train-diffusion (repeatable), e.g. --set train.lr=5e-4")
    p.add_argument("--guidance", default="1,2,3,4,5", help="comma-separated scales")
    p.add_argument("--per-prompt", type=int, default=2, help="images per prompt and scale (120 prompts; default 2)")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps (default 25)")
    p.add_argument("--batch-size", type=int, default=60)
    add_seed_and_threads(p)
    args = p.parse_args(argv)
    scales = [float(g) for g in args.guidance.split(",") if g.strip()]
    out = args.out
    env = prepare_out(out, args.threads)
    phases_file = out / "phases.json"
    # wall seconds and CPU seconds (this process and its training subprocesses) of each phase: on a shared
    # machine the CPU seconds are what the phase costs on one idle core
    seconds, cpu_seconds = json.loads(phases_file.read_text()) if phases_file.is_file() else ({}, {})
    print(f"CPU: {cpu_name()}; torch threads: {args.threads}; torch {torch.__version__}", flush=True)

    def phase(name: str, done: bool, work) -> None:
        if done and name in seconds:
            print(f"[{name}] reused ({seconds[name]:.0f} s in the run that made it)", flush=True)
            return
        t0, c0 = time.perf_counter(), cpu_time()
        work()
        seconds[name], cpu_seconds[name] = time.perf_counter() - t0, cpu_time() - c0
        phases_file.write_text(json.dumps([seconds, cpu_seconds], indent=1))
        print(f"[{name}] {seconds[name]:.0f} s ({cpu_seconds[name]:.0f} CPU s)", flush=True)

    data, ae, text = out / "data", out / "autoencoder", out / "text"
    common = ["--set", "train.progress=false", "--set", "data.num_workers=0"]
    phase("data", (data / "metadata.jsonl").is_file(), lambda: make_folder(data, args.count, args.size, args.seed))
    phase("autoencoder", (ae / "vqvae").is_dir(), lambda: run_cli(
        ["train-autoencoder", "--config", args.ae_config, "--data", str(data), "--out", str(ae),
         "--max-steps", str(args.ae_steps), "--set", f"train.seed={args.seed}", *common], out / "autoencoder.log", env))
    extra = [a for kv in args.set for a in ("--set", kv)]
    phase("text model", (text / "pipeline" / "model_index.json").is_file(), lambda: run_cli(
        ["train-diffusion", "--config", args.config, "--autoencoder", str(ae), "--data", str(data), "--out", str(text),
         "--max-steps", str(args.steps), "--set", f"train.seed={args.seed}", *common, *extra], out / "text.log", env))

    from vqldm.pipelines.pipeline import load_pipeline

    pipe = load_pipeline(text / "pipeline", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    prompts = eval_prompts(args.per_prompt)
    real = real_images(args.per_prompt, args.seed, args.size)
    generated: dict[float, list[np.ndarray]] = {}

    def autoencode() -> None:
        x = torch.from_numpy(np.stack(real)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        with torch.inference_mode():
            rec = torch.cat([pipe.decode_latents(pipe.encode_image(part)) for part in x.split(args.batch_size)])
        generated["autoencoded"] = to_uint8((rec.permute(0, 2, 3, 1) + 1.0) / 2.0)

    phase("autoencode real", False, autoencode)
    for g in scales:
        def sample(g=g) -> None:
            images = []
            for i in range(0, len(prompts), args.batch_size):
                gen = torch.Generator().manual_seed(args.seed * 1_000_003 + i)  # the same noise at every scale
                batch = prompts[i:i + args.batch_size]
                images += to_uint8(pipe(prompt=batch, guidance_scale=g, num_inference_steps=args.sample_steps,
                                        generator=gen, output_type="np").images)
            generated[g] = images
            first = list(range(0, len(prompts), args.per_prompt))  # one image per prompt, 24 prompts a row
            grid([images[j] for j in first], 24).save(out / f"samples_g{g:g}.png")
        phase(f"sample g={g:g}", False, sample)
    grid([real[j] for j in range(0, len(prompts), args.per_prompt)], 24).save(out / "real.png")

    clip_score, why_not = clip_scorer()
    t0, c0 = time.perf_counter(), cpu_time()
    rows = [{"row": "real images", **score(real, prompts)},
            {"row": "real, autoencoded", **score(generated["autoencoded"], prompts)},
            {"row": "chance", **chance_row()}]
    rows += [{"row": f"guidance {g:g}", "guidance": g, **score(generated[g], prompts)} for g in scales]
    if clip_score is not None:
        sets = [real, generated["autoencoded"], None, *(generated[g] for g in scales)]
        for r, imgs in zip(rows, sets):
            r["clip_score"] = clip_score(imgs, prompts) if imgs is not None else None
    seconds["check"], cpu_seconds["check"] = time.perf_counter() - t0, cpu_time() - c0

    print()
    print(f"Prompt matching, {len(prompts)} images per row ({len(combinations())} prompts x {args.per_prompt}), "
          f"DDIM {args.sample_steps} steps; {args.count} training images, autoencoder {args.ae_steps} steps, "
          f"text model {args.steps} steps")
    print(format_table(rows, clip_score is not None))
    if clip_score is None:
        print(f"CLIP score skipped: no CLIP weights in the local Hugging Face cache ({CLIP_MODEL}; {why_not})")
    print(f"CPU: {cpu_name()}; threads: {args.threads}")
    print("seconds (wall / CPU): " + ", ".join(f"{k} {v:.0f} / {cpu_seconds[k]:.0f}" for k, v in seconds.items())
          + f"; total {sum(seconds.values()):.0f} / {sum(cpu_seconds.values()):.0f}")
    report = {"rows": rows, "columns": [*COLUMNS, *(["clip_score"] if clip_score else [])], "prompts": len(prompts),
              "per_prompt": args.per_prompt, "sample_steps": args.sample_steps, "count": args.count,
              "ae_steps": args.ae_steps, "steps": args.steps, "config": args.config, "ae_config": args.ae_config,
              "set": args.set, "cpu": cpu_name(), "threads": args.threads, "seconds": seconds, "cpu_seconds": cpu_seconds,
              "clip_skipped": why_not, "command": " ".join(sys.argv)}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    run_main(main)
