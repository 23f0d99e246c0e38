"""Copy a trained pipeline folder (and a trained feature classifier) into ``pipelines/default_model``.

    python scripts/install_default_model.py runs/ldm/pipeline runs/features \
        [--scheduler unipc --steps 10 --scheduler-option timestep_spacing=trailing --guidance 3]

The scheduler and step count written into ``vqldm.json`` become ``vqldm generate``'s defaults; choose
them from ``benchmarks/bench_steps.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vqldm.plumbing.checkpoint import AtomicDir, atomic_write_json  # noqa: E402

TARGET = ROOT / "pipelines" / "default_model"
FEATURES_TARGET = ROOT / "evaluation" / "networks" / "fashion-mnist-detail"


def copy_folder(src: Path, dst: Path) -> None:
    with AtomicDir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pipeline", type=Path)
    p.add_argument("features", type=Path, nargs="?")
    p.add_argument("--scheduler", default=None, help="default sampler written into vqldm.json")
    p.add_argument("--steps", type=int, default=None, help="default step count written into vqldm.json")
    p.add_argument("--guidance", type=float, default=None,
                   help="default classifier-free guidance written into vqldm.json (choose it with benchmarks/bench_guidance.py)")
    p.add_argument("--scheduler-option", action="append", default=[], metavar="KEY=VALUE",
                   help="default sampler option written into vqldm.json (repeatable), e.g. timestep_spacing=trailing")
    args = p.parse_args()
    if not (args.pipeline / "model_index.json").is_file():
        sys.exit(f"error: {args.pipeline} is not a pipeline folder (no model_index.json)")
    for name in ("vqvae", "unet", "scheduler"):
        copy_folder(args.pipeline / name, TARGET / name)
    info = json.loads((args.pipeline / "vqldm.json").read_text())
    info.pop("training_config", None)  # keep the shipped folder small and readable
    if args.scheduler:
        info["default_scheduler"] = args.scheduler
    if args.steps:
        info["default_steps"] = args.steps
    if args.guidance is not None:
        if not args.guidance >= 1.0:
            sys.exit(f"error: --guidance must be >= 1, got {args.guidance}")
        info["default_guidance"] = args.guidance
    if args.scheduler_option:
        options = {}
        for item in args.scheduler_option:
            key, sep, value = item.partition("=")
            if not sep:
                sys.exit(f"error: --scheduler-option {item!r} is not KEY=VALUE")
            options[key] = json.loads(value) if value in ("true", "false") or value.lstrip("-").isdigit() else value
        info["default_scheduler_options"] = options
    atomic_write_json(TARGET / "vqldm.json", info)
    shutil.copy2(args.pipeline / "model_index.json", TARGET / "model_index.json")
    if args.features:
        copy_folder(args.features, FEATURES_TARGET)
    for f in [*TARGET.rglob("*"), *FEATURES_TARGET.rglob("*")]:  # readable by everyone, like any installed package file
        f.chmod(0o755 if f.is_dir() else 0o644)
    total = sum(f.stat().st_size for f in TARGET.rglob("*") if f.is_file())
    print(f"installed {args.pipeline} into {TARGET} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
