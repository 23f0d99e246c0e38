"""The data path at scale (issue 12): memory and start-up of the autoencoder trainer on folders of 256x256
JPEGs, against the number of images.

    python benchmarks/bench_data.py                                  # 2,000 and 20,000 images (writes them once)
    python benchmarks/bench_data.py --counts 100 300 --steps 4       # a quick check
    python benchmarks/bench_data.py --full-model --workers 8 --no-torchrun   # one GPU: the preset's model

For each image count N, ``vqldm train-autoencoder --config ldm-vq-f4-256`` (tiny widths and batch 4 unless
``--full-model``: the model is not what is measured) runs as a subprocess, three times:

* first run: a fresh run folder and a fresh vqldm cache folder (``VQLDM_CACHE_DIR``), so any one-time
  work on the folder (an index) is paid here;
* restart: ``--resume`` of that run on the unchanged folder, ``--steps`` more steps;
* 2 processes: ``torchrun --standalone --nproc_per_node 2`` (the README's CPU launcher), fresh run folder.

Memory is sampled every ``--interval`` seconds over the whole process tree (the trainer, its DataLoader
workers, torchrun's agent and workers): the sum of the proportional set sizes (PSS: a page shared by k
processes counts 1/k in each, so copy-on-write pages of forked workers and shared memory maps count
once) is the number the criteria use. Printed beside it: the sum of RSS (shared pages counted in every
process), the launched process's own peak RSS (the kernel's high-water mark) and the peak PSS of the rest
of the tree. Start-up is the time from launch until the first training
step's row appears in the run's ``metrics.jsonl`` (``train.log_every=1``); the step time is the median
gap between the following rows, so the trainer's consumption is batch x processes / step time.

The same runs on a folder of ``--base-count`` images give the fixed cost (interpreter, torch, model,
optimizer): "data memory" is a run's peak minus that folder's peak with as many processes.

Loader throughput: the project's training loader (``vqldm.data.loading.train_batches``, the streaming
data path; "loader API not available" where this checkout has none) over ``--loader-images`` images with
``data.num_workers`` workers, and, for reference, a plain ``torch.utils.data.DataLoader`` that decodes
the same files with PIL.

Criteria (issue 12, acceptance 1), computed from the measurements at the smallest and largest count:
1. peak memory at the largest count <= 1.10 x at the smallest, both the tree's PSS (sampled) and the
   trainer's own peak RSS (exact: transient peaks between samples included);
2. a restart on the unchanged folder starts in seconds: its start-up exceeds the ``--base-count``
   folder's restart by at most ``--restart-limit`` seconds;
3. 2 processes do not double the data memory: data memory with 2 processes <= 1.5 x with 1, or below the
   noise floor (10% of the base folder's 1-process peak).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py

from common import cpu_name, run_main  # noqa: E402

PRESET = "ldm-vq-f4-256"
SIZE = 256
MB = 2**20
# a cheap model, so that the data path is what the memory shows: tiny widths and no attention over the
# 64x64 latent grid (4096 tokens: ~65 MB of scores per image). The geometry stays the preset's (256 px RGB,
# f = 4, 3 latent channels); no LPIPS (a VGG to load, and a download for online users).
TINY = ["model.block_out_channels=[8,16,16]", "model.layers_per_block=1", "model.norm_num_groups=4",
        "model.mid_block_add_attention=false", "model.codebook_size=64", "quantizer.kmeans_iters=2"]
FINAL_GRID = 16  # the trainer's last reconstruction grid: up to 16 held-out images
ALWAYS = ["loss.perceptual_weight=0", "train.progress=false", "train.log_every=1", "train.image_every=1000000",
          "train.checkpoint_every=1000000", f"train.scaling_max_images={FINAL_GRID}", f"train.eval_max_images={FINAL_GRID}"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", type=int, nargs="+", default=[2000, 20000], help="folder sizes to measure")
    # >= 16 held-out images (5%: 600 files give 19): the trainer's final grid (up to 16 held-out images, decoded
    # at once) and the final evaluation then cost what they cost at any larger count
    p.add_argument("--base-count", type=int, default=600, help="a small folder whose runs give the fixed cost")
    p.add_argument("--work", type=Path, default=Path("bench_out/data"), help="image folders (kept) and runs")
    p.add_argument("--steps", type=int, default=5, help="training steps per run (>= 3: start-up + step times)")
    p.add_argument("--batch-size", type=int, default=None, help="per process (default: 4, or the preset's with --full-model)")
    p.add_argument("--workers", type=int, default=None, help="data.num_workers (default: the project's choice)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process")
    p.add_argument("--full-model", action="store_true", help="the preset's widths instead of tiny ones")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override (repeatable)")
    p.add_argument("--loader-images", type=int, default=384, help="images read in the loader measurement")
    p.add_argument("--interval", type=float, default=0.05, help="memory sampling interval (s)")
    p.add_argument("--restart-limit", type=float, default=5.0, help="criterion 2: seconds over the base folder's restart")
    p.add_argument("--no-torchrun", action="store_true", help="skip the 2-process runs")
    p.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    args = p.parse_args(argv)
    if args.steps < 3:
        p.error("--steps must be >= 3")
    return args


# ----------------------------------------------------------------------------- the image folders
def _write_images(folder: str, indices: list[int], seed: int) -> int:
    """Synthetic photographs of a sort: a smooth random colour field, a few shapes, mild sensor noise
    (so the JPEGs are tens of kB, like real 256 px photos, not a few hundred bytes)."""
    from PIL import Image, ImageDraw, ImageFilter

    for i in indices:
        rng = np.random.default_rng([seed, i])
        field_ = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(field_)
        for _ in range(int(rng.integers(2, 7))):
            x, y = (int(v) for v in rng.integers(-32, SIZE, 2))
            w, h = (int(v) for v in rng.integers(16, SIZE // 2, 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            kind = int(rng.integers(3))
            if kind == 0:
                draw.ellipse([x, y, x + w, y + h], fill=colour)
            elif kind == 1:
                draw.rectangle([x, y, x + w, y + h], fill=colour)
            else:
                draw.polygon([tuple(int(v) for v in rng.integers(0, SIZE, 2)) for _ in range(3)], fill=colour)
        img = field_.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.5))))
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, (SIZE, SIZE, 3), dtype=np.int16)  # sd 3.7
        out = Path(folder) / f"{i // 1000:03d}" / f"{i:06d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(out, quality=90)
    return len(indices)


def image_folder(work: Path, count: int, seed: int = 0) -> Path:
    """``work/images_<count>``: ``count`` 256x256 JPEGs in subfolders of 1,000, written once (a marker
    beside the folder says it is complete; the same seed writes the same files)."""
    folder, done = work / f"images_{count}", work / f"images_{count}.done"
    if done.is_file() and json.loads(done.read_text()) == {"count": count, "seed": seed, "size": SIZE}:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    chunks = [list(range(s, min(count, s + 250))) for s in range(0, count, 250)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        written = sum(pool.map(_write_images, [str(folder)] * len(chunks), chunks, [seed] * len(chunks)))
    done.write_text(json.dumps({"count": count, "seed": seed, "size": SIZE}))
    size = sum(f.stat().st_size for f in folder.rglob("*.jpg"))
    print(f"wrote {written} JPEGs ({size / written / 1024:.0f} kB each) to {folder} in {time.perf_counter() - t0:.1f} s", flush=True)
    return folder


# ----------------------------------------------------------------------------- one measured run
@dataclass
class Run:
    label: str
    images: int
    processes: int
    returncode: int = 0
    total_s: float = 0.0
    first_step_s: float | None = None  # launch -> first training step's metrics row
    step_s: float | None = None  # median time between the following steps
    peak_pss_mb: float = 0.0  # sum over the process tree, at its peak
    peak_rss_mb: float = 0.0
    main_rss_mb: float = 0.0  # the launched process alone: the kernel's high-water mark (VmHWM)
    others_pss_mb: float = 0.0  # the rest of the tree (DataLoader workers, torchrun's workers), at its peak
    max_procs: int = 0
    log: str = ""
    step_times: list = field(default_factory=list)


def _tree(root):
    import psutil

    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


def _memory(proc) -> tuple[float, float]:
    """(PSS, RSS) in bytes; PSS falls back to RSS where the platform has none."""
    import psutil

    try:
        info = proc.memory_full_info()
        return float(getattr(info, "pss", info.rss)), float(info.rss)
    except psutil.AccessDenied:
        rss = float(proc.memory_info().rss)
        return rss, rss


def _high_water_mark(pid: int, rss: float) -> float:
    """Peak RSS of process ``pid`` so far, in bytes (Linux: VmHWM, exact between samples); else ``rss``."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return max(rss, float(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return rss


def _step_rows(path: Path, offset: int, first_step: int) -> tuple[int, list[int]]:
    """New complete rows of metrics.jsonl after byte ``offset``: the steps >= ``first_step`` that trained."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return offset, []
    end = data.rfind(b"\n") + 1
    steps = []
    for line in data[:end].splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("step", -1) >= first_step and any(k.startswith("train/") for k in row):
            steps.append(int(row["step"]))
    return offset + end, steps


def measure(cmd: list[str], run_dir: Path, label: str, images: int, processes: int, env: dict, interval: float,
            first_step: int = 1) -> Run:
    """Run ``cmd``, sampling the process tree's memory and watching ``run_dir/metrics.jsonl``."""
    import psutil

    run = Run(label, images, processes)
    log_path = run_dir.parent / f"{run_dir.name}.{label.replace(' ', '_')}.log"
    metrics = run_dir / "metrics.jsonl"
    offset = metrics.stat().st_size if metrics.is_file() else 0
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        root = psutil.Process(child.pid)
        while True:
            done = child.poll() is not None
            pss = rss = main_pss = 0.0
            procs = _tree(root) if not done else []
            for proc in procs:
                try:
                    p, r = _memory(proc)
                except psutil.Error:  # exited between listing and reading
                    continue
                pss, rss = pss + p, rss + r
                if proc is root:
                    main_pss = p
                    run.main_rss_mb = max(run.main_rss_mb, _high_water_mark(proc.pid, r) / MB)
            run.others_pss_mb = max(run.others_pss_mb, (pss - main_pss) / MB) if procs else run.others_pss_mb
            run.peak_pss_mb, run.peak_rss_mb = max(run.peak_pss_mb, pss / MB), max(run.peak_rss_mb, rss / MB)
            run.max_procs = max(run.max_procs, len(procs))
            offset, steps = _step_rows(metrics, offset, first_step)
            now = time.perf_counter() - t0
            run.step_times.extend((s, now) for s in steps)
            if done:
                break
            time.sleep(interval)
        run.total_s = time.perf_counter() - t0
    run.returncode = child.returncode
    run.log = str(log_path)
    if run.step_times:
        run.first_step_s = run.step_times[0][1]
        gaps = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(run.step_times, run.step_times[1:]) if s1 > s0]
        run.step_s = statistics.median(gaps) if gaps else None
    if run.returncode != 0:
        tail = Path(log_path).read_text(errors="replace").strip().splitlines()[-3:]
        print(f"  {label}: exit code {run.returncode}; log {log_path}:\n    " + "\n    ".join(tail), flush=True)
    return run


# ----------------------------------------------------------------------------- loader throughput
def _pil_item(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((SIZE, SIZE)), dtype=np.uint8).transpose(2, 0, 1).copy()


class _Files:  # a picklable map-style dataset for the reference loader
    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import torch

        return torch.from_numpy(_pil_item(self.files[i]))


def _rate(batches, limit: int) -> tuple[float, float]:
    """(seconds to the first batch, images/s after it) over ``limit`` images of an iterator of batches."""
    t0 = time.perf_counter()
    seen, t_first = 0, None
    for x in batches:
        x = x[0] if isinstance(x, (list, tuple)) else x
        seen += len(x)
        if t_first is None:
            t_first, first = time.perf_counter(), seen
        if seen >= limit:
            break
    t1 = time.perf_counter()
    return t_first - t0, (seen - first) / max(t1 - t_first, 1e-9)


def loader_rates(folder: Path, batch: int, workers: int | None, limit: int, env: dict) -> dict:
    import torch

    out: dict = {}
    os.environ["VQLDM_CACHE_DIR"] = env["VQLDM_CACHE_DIR"]  # reuse the runs' index
    try:  # the streaming data path (issue 12); older checkouts hold the whole folder in memory
        from vqldm.data.loading import BatchSampler, train_batches
        from vqldm.data.config import DataConfig
        from vqldm.data.sources import load_datasets
    except ImportError:
        print("  loader API not available (vqldm.data.loading has no train_batches): project loader skipped", flush=True)
    else:
        cfg = DataConfig(image_size=SIZE, channels=3, fit="resize", num_workers=workers)
        train = load_datasets(str(folder), cfg, log=lambda _: None, progress=False).train
        batches = train_batches(train, BatchSampler(len(train), batch, seed=0), 0, cfg, seed=0)
        out["project_first_batch_s"], out["project_images_per_s"] = _rate(batches, limit)
        batches.close()
    files = sorted(str(p) for p in folder.rglob("*.jpg"))
    n_workers = workers if workers is not None else max(1, min(8, (os.cpu_count() or 2) - 1))
    loader = torch.utils.data.DataLoader(_Files(files), batch_size=batch, shuffle=True, num_workers=n_workers,
                                         generator=torch.Generator().manual_seed(0))
    out["reference_first_batch_s"], out["reference_images_per_s"] = _rate(iter(loader), limit)
    out["reference_workers"] = n_workers
    return out


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    overrides = ([] if args.full_model else TINY) + ALWAYS + args.overrides
    batch_size = args.batch_size or (None if args.full_model else 4)
    if batch_size:  # the final evaluation too: its activations are not what is measured either
        overrides += [f"train.batch_size={batch_size}", f"train.eval_batch_size={batch_size}"]
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    from vqldm.autoencoder.config import load_autoencoder_config

    batch = load_autoencoder_config(PRESET, overrides).train.batch_size
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; OMP_NUM_THREADS={args.threads}; torch {torch.__version__}")
    print(f"vqldm train-autoencoder --config {PRESET} --max-steps {args.steps} " + " ".join(f"--set {o}" for o in overrides))

    counts = sorted(set(args.counts))
    runs: dict[int, dict[str, Run]] = {}
    loaders: dict[int, dict] = {}
    for count in [args.base_count, *counts]:
        folder = image_folder(work, count)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1",
               "VQLDM_CACHE_DIR": str(work / "cache" / str(count))}
        shutil.rmtree(env["VQLDM_CACHE_DIR"], ignore_errors=True)  # the first run pays any one-time indexing
        base = ["train-autoencoder", "--config", PRESET, "--data", str(folder), *[a for o in overrides for a in ("--set", o)]]
        one, two = work / "runs" / f"{count}_1proc", work / "runs" / f"{count}_2proc"
        for d in (one, two):
            shutil.rmtree(d, ignore_errors=True)
            d.parent.mkdir(parents=True, exist_ok=True)
        py = [sys.executable, "-m", "vqldm"]
        got = runs[count] = {}
        print(f"{count} images:", flush=True)
        got["first run"] = measure([*py, *base, "--out", str(one), "--max-steps", str(args.steps)], one, "first run",
                                   count, 1, env, args.interval)
        got["restart"] = measure([*py, *base, "--out", str(one), "--max-steps", str(2 * args.steps), "--resume"], one,
                                 "restart", count, 1, env, args.interval, first_step=args.steps + 1)
        if not args.no_torchrun:
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vqldm"]
            got["2 processes"] = measure([*torchrun, *base, "--out", str(two), "--max-steps", str(args.steps)], two,
                                         "2 processes", count, 2, env, args.interval)
        loaders[count] = loader_rates(folder, batch, args.workers, args.loader_images, env)
        held = _held_out_images(one)
        if count == args.base_count and held is not None and held < FINAL_GRID:
            print(f"  warning: only {held} held-out images in the base folder: its final grid and evaluation cost less "
                  f"than at larger counts (up to {FINAL_GRID}); raise --base-count", flush=True)

    # ------------------------------------------------------------------ table
    print()
    print(f"{'images':>7} {'run':<12} {'procs':>5} {'exit':>4} {'start-up s':>10} {'step s':>7} {'img/s':>6} {'total s':>8} "
          f"{'PSS MB':>8} {'RSS MB':>8} {'main MB':>8} {'others MB':>9} {'data MB':>8}")
    for count, got in runs.items():
        for label, r in got.items():
            base_run = runs[args.base_count].get(label)
            data_mb = r.peak_pss_mb - base_run.peak_pss_mb if base_run else float("nan")
            img_s = batch * r.processes / r.step_s if r.step_s else float("nan")
            print(f"{count:>7} {label:<12} {r.processes:>5} {r.returncode:>4} {_f(r.first_step_s, 10, 1)} {_f(r.step_s, 7, 2)} "
                  f"{img_s:>6.1f} {r.total_s:>8.1f} {r.peak_pss_mb:>8.0f} {r.peak_rss_mb:>8.0f} {r.main_rss_mb:>8.0f} {r.others_pss_mb:>9.0f} {data_mb:>8.0f}")
    print("(start-up: launch -> first training step; PSS/RSS: peak of the sum over the process tree; main: the launched "
          "process's peak RSS; others: peak PSS of the rest of the tree; data: PSS minus the same run's on the base folder)")
    print()
    for count, rates in loaders.items():
        r = runs[count]["first run"]
        used = f"{batch / r.step_s:.1f} images/s (batch {batch} / {r.step_s:.2f} s per step)" if r.step_s else "n/a"
        project = (f"{rates['project_images_per_s']:.1f} images/s (first batch after {rates['project_first_batch_s']:.1f} s)"
                   if "project_images_per_s" in rates else "loader API not available")
        print(f"{count:>7} images: project loader {project}; reference DataLoader+PIL, {rates['reference_workers']} workers: "
              f"{rates['reference_images_per_s']:.1f} images/s; 1-process trainer consumes {used}")

    # ------------------------------------------------------------------ criteria
    print()
    small, large = runs[counts[0]], runs[counts[-1]]
    results = {}
    big, little = large["first run"], small["first run"]
    ratio, main_ratio = big.peak_pss_mb / max(little.peak_pss_mb, 1e-9), big.main_rss_mb / max(little.main_rss_mb, 1e-9)
    results["memory_flat"] = ratio <= 1.10 and main_ratio <= 1.10
    print(f"1. peak memory {counts[-1]} vs {counts[0]} images: tree PSS {big.peak_pss_mb:.0f} / {little.peak_pss_mb:.0f} MB "
          f"= {ratio:.2f}x, trainer's peak RSS {big.main_rss_mb:.0f} / {little.main_rss_mb:.0f} MB = {main_ratio:.2f}x "
          f"(both <= 1.10): {_pass(results['memory_flat'])}")
    restart, base_restart = large["restart"].first_step_s, runs[args.base_count]["restart"].first_step_s
    if restart is None or base_restart is None:
        results["restart_fast"] = False
        print("2. restart start-up: no training step was logged: FAIL")
    else:
        results["restart_fast"] = restart - base_restart <= args.restart_limit
        print(f"2. restart on the unchanged {counts[-1]}-image folder: first step after {restart:.1f} s "
              f"({args.base_count}-image folder: {base_restart:.1f} s; {restart - base_restart:+.1f} s, limit +{args.restart_limit:g} s; "
              f"first run: {large['first run'].first_step_s or float('nan'):.1f} s): {_pass(results['restart_fast'])}")
    if not args.no_torchrun:
        base1, base2 = runs[args.base_count]["first run"], runs[args.base_count]["2 processes"]
        data1 = large["first run"].peak_pss_mb - base1.peak_pss_mb
        data2 = large["2 processes"].peak_pss_mb - base2.peak_pss_mb
        floor = 0.10 * base1.peak_pss_mb
        results["two_processes"] = data2 <= 1.5 * data1 or data2 <= floor
        print(f"3. data memory at {counts[-1]} images, 2 processes vs 1: {data2:.0f} vs {data1:.0f} MB "
              f"= {f'{data2 / data1:.2f}x' if data1 > 0 else 'n/a'} (<= 1.5x, or <= {floor:.0f} MB noise floor): "
              f"{_pass(results['two_processes'])}")
    failed = [r for got in runs.values() for r in got.values() if r.returncode != 0]
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(f"{r.images} {r.label} (log {r.log})" for r in failed))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": {c: {k: asdict(r) for k, r in g.items()} for c, g in runs.items()},
                                         "loaders": loaders, "criteria": results, "batch": batch,
                                         "overrides": overrides, "cpu": cpu_name(), "threads": args.threads}, indent=1))
    return 1 if failed else 0


def _held_out_images(run_dir: Path) -> int | None:
    try:
        return int(json.loads((run_dir / "metrics.json").read_text())["holdout"]["images"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _f(value, width: int, digits: int) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'n/a':>{width}}"


def _pass(ok: bool) -> str:
    return "pass" if ok else "FAIL"


if __name__ == "__main__":
    run_main(main)
