"""Classifier-free guidance sweep of a class-conditional pipeline: which scale is the default.

    python benchmarks/bench_guidance.py                                  # the shipped model, guidance 1,1.5,2,3,5
    python benchmarks/bench_guidance.py --model runs/ldm/pipeline --guidance 1,2,3 --num-samples 500

For each scale, ``vqldm evaluate generation`` (the model's default sampler and steps, the default
detail-sensitive features) measures FID with its calibration rows, precision/recall and how often the
independent classifier recognises the requested class. The chosen default is the scale whose samples lie
closest to the real data (lowest FID) among those whose class accuracy is at least 0.95x the classifier's
accuracy on real images (all scales when none is); ``scripts/install_default_model.py --guidance``
stores it in ``vqldm.json`` as ``default_guidance``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py

from common import cpu_name, run_main  # noqa: E402


def choose(rows: list[dict], ratio: float = 0.95) -> dict:
    """The lowest-FID row among those recognised at least ``ratio`` x as often as real images."""
    ok = [r for r in rows if r["class_accuracy"] >= ratio * r["real_accuracy"]]
    return min(ok or rows, key=lambda r: r["fid"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="pipeline folder (default: the shipped model)")
    p.add_argument("--guidance", default="1,1.5,2,3,5", help="comma-separated scales")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--features", default=None, help="as `vqldm evaluate --features` (default: its default)")
    p.add_argument("--out", default="bench_out/guidance")
    args = p.parse_args(argv)
    scales = [float(g) for g in args.guidance.split(",") if g.strip()]
    print(f"CPU: {cpu_name()}; model {args.model or 'shipped'}; {args.num_samples} samples per scale")
    rows = []
    for g in scales:
        out = Path(args.out) / f"g{g:g}"
        cmd = [sys.executable, "-m", "vqldm", "evaluate", "generation", "--num-samples", str(args.num_samples),
               "--guidance", str(g), "--out", str(out), "--no-progress"]
        cmd += ["--model", args.model] if args.model else []
        cmd += ["--features", args.features] if args.features else []
        subprocess.run(cmd, check=True)
        rep = json.loads((out / "report.json").read_text())
        cal = {r["name"]: r["fd"] for r in rep["calibration"]}
        acc = rep["class_accuracy"] or {}
        rows.append({"guidance": g, "fid": rep["fid"], "scale": rep["fid_scale"], "precision": rep.get("precision", float("nan")),
                     "recall": rep.get("recall", float("nan")), "class_accuracy": acc.get("class_accuracy", float("nan")),
                     "real_accuracy": acc.get("classifier_accuracy_on_real", float("nan")), "cal": cal,
                     "features": rep["features"], "sampler": f"{rep['scheduler']}, {rep['steps']} steps"})
    r0 = rows[0]
    print(f"\nguidance sweep: {args.num_samples} generated vs {args.num_samples} held-out real images, {r0['features']} features, {r0['sampler']}")
    print("calibration (FID of real images vs the same reference): "
          + ", ".join(f"{k} {v:.2f}" for k, v in r0["cal"].items()))
    print(f"{'guidance':>8s} {'FID':>8s} {'precision':>9s} {'recall':>7s} {'class acc':>9s} {'/ real':>7s}  place on the scale")
    for r in rows:
        print(f"{r['guidance']:8g} {r['fid']:8.2f} {r['precision']:9.3f} {r['recall']:7.3f} {100 * r['class_accuracy']:8.1f}% "
              f"{r['class_accuracy'] / r['real_accuracy']:6.3f}x  {r['scale']}")
    best = choose(rows)
    print(f"chosen default_guidance: {best['guidance']:g} (lowest FID among scales recognised >= 0.95x as often as real images)")
    return 0


if __name__ == "__main__":
    run_main(main)
