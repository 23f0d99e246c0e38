"""Host synchronisations and speed of vqldm's stage-2 training step, this checkout against another revision.

    python benchmarks/bench_train_step.py --against HEAD~3            # sync profile + steps/s, both trees
    python benchmarks/bench_train_step.py --against REV --stage prior --steps 60 --repeats 5

Issue 21, acceptance 1. Both trees run the real trainer (``vqldm train-diffusion``, or ``train-prior``) on
the latents of one tiny autoencoder trained first (``--config tiny``, Fashion-MNIST), each in its own
process (the other revision is exported with ``git archive`` and put first on PYTHONPATH):

* **sync profile**: every device-to-host read (``aten::_local_scalar_dense``: ``.item()``, ``float(t)``,
  ``bool(t)``, ``int(t)``, and ``Tensor.tolist``/``Tensor.cpu``) counted by a ``TorchDispatchMode`` and by
  wrappers, with the vqldm line that asked for it, in a run of ``--steps`` steps and in one of
  ``--steps // 3`` steps; the difference divided by the steps between them is what one step of the hot path
  costs (set-up, the final log line and the export cancel out). Logging, sample grids and checkpoints are
  pushed past the end (``train.log_every``/``image_every``/``checkpoint_every`` = 10^6), as a hot step has them.
  On a CPU a host read costs little; on a GPU each one drains the queue of launched kernels, which is what
  the issue measured (the UNet trainer at ~10 steps/s on an H200).
* **speed**: ``steps_per_s`` from the run's metrics.json (the loop alone), with the preset's own log
  interval, runs of both trees interleaved, median of ``--repeats``, and the ratio this / other.
* **variants** (``--variant KEY=VALUE``, repeatable, e.g. ``train.channels_last=true``, ``train.compile=true``):
  this checkout with the setting against its defaults. A setting with a one-time cost (compilation) would
  hide it in steps/s, so each repeat runs ``--steps`` and ``--steps // 3`` steps of both: the steady time per
  step is (long loop time - short loop time) / (steps between them), and the one-time cost is what the short
  run took beyond its steps at that rate; the break-even is that cost / the time saved per step. Every run
  gets an empty inductor cache (``TORCHINDUCTOR_CACHE_DIR``), so each compiles from cold, as a first run
  does (a warm on-disk cache made the second run's compilation nearly free and the difference meaningless).

    python benchmarks/bench_train_step.py --variants-only --variant train.channels_last=true --variant train.compile=true
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py

from common import cpu_name, run_main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--set", "train.progress=false", "--set", "train.image_every=1000000", "--set", "train.checkpoint_every=1000000"]


# ----------------------------------------------------------------------------- worker (one tree, one run)
def _vqldm_frame() -> str:
    """The innermost vqldm source line on the stack (outside torch), e.g. 'plumbing/trainkit.py:292'."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = Path(frame.filename)
        if "vqldm" in path.parts or str(path).startswith(os.environ.get("BENCH_TREE", "\0")):
            try:
                rel = path.resolve().relative_to(Path(os.environ["BENCH_TREE"]).resolve())
            except (KeyError, ValueError):
                rel = Path(*path.parts[-2:])
            if rel.parts and rel.parts[0] != "benchmarks":
                return f"{rel}:{frame.lineno}"
    return "outside vqldm"


def worker(args) -> None:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    import vqldm
    from vqldm.cli.main import main

    tree = Path(os.environ["BENCH_TREE"]).resolve()
    if Path(vqldm.__file__).resolve().parent != tree:
        raise SystemExit(f"imported vqldm from {vqldm.__file__}, expected {tree}")
    torch.set_num_threads(args.threads)
    sites: Counter = Counter()

    class CountReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args_=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                sites[_vqldm_frame()] += 1
            return func(*args_, **(kwargs or {}))

    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "cpu")}

    def counting(name):
        original = originals[name]

        def wrapped(self, *a, **k):
            if name == "tolist" or self.device.type != "cpu":
                sites[_vqldm_frame() + f" ({name})"] += 1
            return original(self, *a, **k)
        return wrapped

    command = "train-diffusion" if args.stage == "diffusion" else "train-prior"
    argv = [command, "--config", args.config, "--autoencoder", args.ae, "--data", "fashion-mnist", "--out", args.out,
            "--max-steps", str(args.run_steps), *QUIET]
    if args.stage == "prior":
        argv += ["--kind", "masked"]
    for setting in args.sets:
        argv += ["--set", setting]
    if args.count:
        argv += ["--set", "train.log_every=1000000"]
        for name in originals:
            setattr(torch.Tensor, name, counting(name))
        with CountReads():
            code = main(argv)
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
    else:
        code = main(argv)
    if code:
        raise SystemExit(code)
    metrics = json.loads((Path(args.out) / "metrics.json").read_text())
    print("RESULT " + json.dumps({"sites": dict(sites), "steps_per_s": metrics["steps_per_s"], "steps": metrics["step"]}))


# ----------------------------------------------------------------------------- driver
def export_tree(rev: str, into: Path) -> Path:
    """``git archive REV`` of this repository unpacked as ``into/vqldm`` (the repository root is the package)."""
    pkg = into / "vqldm"
    pkg.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(pkg)], input=archive, check=True)
    return pkg


def run_worker(tree: Path, ae: Path, out: Path, steps: int, count: bool, args, sets: tuple[str, ...] = ()) -> dict:
    # a fresh inductor cache per run: otherwise a train.compile run after the first reuses its compiled graphs
    # from disk, and the one-time cost (and the long-minus-short steady time) would depend on the run order
    env = {**os.environ, "BENCH_TREE": str(tree), "OMP_NUM_THREADS": str(args.threads),
           "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="inductor-", dir=out.parent)}
    if tree != REPO:  # the exported revision goes first; this checkout is the installed (editable) vqldm
        env["PYTHONPATH"] = os.pathsep.join([str(tree.parent), *filter(None, [os.environ.get("PYTHONPATH")])])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--ae", str(ae), "--out", str(out),
           "--run-steps", str(steps), "--stage", args.stage, "--config", args.config, "--threads", str(args.threads)]
    if count:
        cmd.append("--count")
    for setting in sets:
        cmd += ["--set", setting]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree.parent)
    if done.returncode:
        sys.exit(f"worker failed in {tree}:\n{done.stderr[-3000:]}")
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def per_step(long: dict, short: dict, steps: int) -> dict[str, float]:
    """Host reads per step by site: (long run - short run) / (steps between them)."""
    sites = set(long["sites"]) | set(short["sites"])
    diff = {s: (long["sites"].get(s, 0) - short["sites"].get(s, 0)) / steps for s in sites}
    return {s: v for s, v in sorted(diff.items(), key=lambda kv: -kv[1]) if abs(v) > 1e-9}


def driver(args) -> int:
    import torch

    from vqldm.autoencoder.config import load_autoencoder_config
    from vqldm.autoencoder.train import train_autoencoder

    work = Path(tempfile.mkdtemp(prefix="bench-train-step-"))
    trees = {"this checkout": REPO}
    if args.against:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.against], check=True,
                             capture_output=True, text=True).stdout.strip()
        trees[f"{args.against} ({rev})"] = export_tree(args.against, work / "other")
    print(f"CPU: {cpu_name()}, cpu_count {os.cpu_count()}; torch {torch.__version__}, {args.threads} thread(s)")
    print(f"stage 2: vqldm train-{args.stage} --config {args.config} on a tiny autoencoder (20 steps, Fashion-MNIST)")
    ae = work / "ae"
    cfg = load_autoencoder_config("tiny", ["data.max_images=512", "train.eval_max_images=64", "train.progress=false"])
    torch.set_num_threads(args.threads)
    train_autoencoder(cfg, ae, data="fashion-mnist")

    short = max(2, args.steps // 3)
    if args.variants_only:
        variants(args, ae, work, short)
        return 0
    print(f"\nhost reads per training step (runs of {args.steps} and {short} steps, difference / {args.steps - short}):")
    for name, tree in trees.items():
        long_run = run_worker(tree, ae, work / f"count-{len(name)}-long", args.steps, True, args)
        short_run = run_worker(tree, ae, work / f"count-{len(name)}-short", short, True, args)
        rows = per_step(long_run, short_run, args.steps - short)
        total = sum(rows.values())
        print(f"  {name}: {total:.2f} per step" + ("" if rows else "  (none)"))
        for site, n in rows.items():
            print(f"      {n:5.2f}  {site}")

    print(f"\nsteps/s of the training loop ({args.steps} steps, the preset's log interval; median of {args.repeats}, "
          "runs interleaved):")
    speeds: dict[str, list[float]] = {name: [] for name in trees}
    for r in range(args.repeats):
        order = list(trees.items()) if r % 2 == 0 else list(reversed(trees.items()))
        for name, tree in order:
            speeds[name].append(run_worker(tree, ae, work / f"speed-{r}-{len(name)}", args.steps, False, args)["steps_per_s"])
    medians = {name: statistics.median(v) for name, v in speeds.items()}
    base = medians["this checkout"]
    for name, v in speeds.items():
        ratio = f"  ratio this/other {base / medians[name]:.3f}" if name != "this checkout" else ""
        print(f"  {name:28s} {medians[name]:7.2f} steps/s  (runs: {', '.join(f'{s:.2f}' for s in v)}){ratio}")
    if args.variant:
        variants(args, ae, work, short)
    return 0


def variants(args, ae: Path, work: Path, short: int) -> None:
    """This checkout with each ``--variant`` setting against its defaults: steady s/step and one-time cost."""
    print(f"\nvariants of this checkout (runs of {args.steps} and {short} steps, interleaved; median of {args.repeats}):")
    configs = {"defaults": (), **{v: (v,) for v in args.variant}}
    steady: dict[str, list[float]] = {name: [] for name in configs}
    once: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(args.repeats):
        order = list(configs.items()) if r % 2 == 0 else list(reversed(configs.items()))
        for i, (name, sets) in enumerate(order):
            seconds = {}
            for steps in (args.steps, short):
                res = run_worker(REPO, ae, work / f"variant-{r}-{i}-{steps}", steps, False, args, sets)
                seconds[steps] = res["steps"] / res["steps_per_s"]
            per = (seconds[args.steps] - seconds[short]) / (args.steps - short)
            steady[name].append(per)
            once[name].append(seconds[short] - short * per)
    base = statistics.median(steady["defaults"])
    base_once = statistics.median(once["defaults"])
    for name in configs:
        per, first = statistics.median(steady[name]), statistics.median(once[name])
        line = f"  {name:32s} {per:.4f} s/step steady, one-time {first:7.1f} s"
        if name != "defaults":
            saved = base - per
            extra = first - base_once
            even = f"break-even after {extra / saved:.0f} steps" if saved > 0 else "never pays back"
            line += f"  step ratio variant/defaults {per / base:.3f}, extra one-time {extra:+.1f} s, {even}"
        print(line)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", help="a git revision to compare with (e.g. HEAD~3); without it only this checkout runs")
    p.add_argument("--stage", choices=["diffusion", "prior"], default="diffusion")
    p.add_argument("--config", default="fashion-mnist", help="the stage-2 preset (default fashion-mnist)")
    p.add_argument("--steps", type=int, default=45, help="steps of the long runs (default 45)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                   help="also time this checkout with this --set against its defaults (repeatable)")
    p.add_argument("--variants-only", action="store_true", help="time the --variant settings only (no sync profile)")
    p.add_argument("--set", action="append", default=[], dest="sets", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ae", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--run-steps", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 6 or args.repeats < 1 or args.threads < 1:
        p.error("--steps must be >= 6, --repeats and --threads >= 1")
    if args.variants_only and not args.variant:
        p.error("--variants-only needs at least one --variant KEY=VALUE")
    bad = [v for v in args.variant if "=" not in v]
    if bad:
        p.error(f"--variant {bad[0]!r} is not KEY=VALUE (e.g. --variant train.channels_last=true)")
    return args


if __name__ == "__main__":
    args = parse()
    if args.worker:
        worker(args)
    else:
        run_main(lambda: driver(args))
