"""The table of benchmarks/shipped_candidates.sh: each candidate tokenizer's autoencoder and generation reports.

    python benchmarks/shipped_candidates.py fsq res      # reads runs/eval-ae-KIND and runs/eval-gen-KIND

Per candidate: the quantizer, training steps and seconds of both stages, held-out rFID / PSNR / codebook
usage (vqldm evaluate autoencoder), generation FD / precision / recall / class accuracy against the
classifier's accuracy on real images (vqldm evaluate generation), then both calibrations and which
candidate has the lowest generation FD (the shipped model's first target; rFID decides a tie).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py

from common import cpu_name  # noqa: E402


def load(path: Path) -> dict:
    if not path.is_file():
        sys.exit(f"error: {path} is missing; run benchmarks/shipped_candidates.sh first")
    return json.loads(path.read_text())


def calibration_line(rows: list[dict]) -> str:
    return ", ".join(f"{r['name']} {r['fd']:.2f}" for r in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kinds", nargs="+")
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--stage2", default="", help="'long': the stage-2 runs continued to LONG_STEPS (runs/ldm-KIND-long)")
    args = p.parse_args(argv)
    rows = []
    for k in args.kinds:
        tag = f"{k}-{args.stage2}" if args.stage2 else k
        ae, gen = load(args.runs / f"eval-ae-{k}" / "report.json"), load(args.runs / f"eval-gen-{tag}" / "report.json")
        ae_m = load(args.runs / f"ae-{k}" / "metrics.json")
        ldm_m = load(args.runs / f"ldm-{tag}" / "metrics.json")
        rows.append({"kind": k, "ae": ae, "gen": gen, "ae_m": ae_m, "ldm_m": ldm_m})
    print(f"shipped-model candidates; CPU: {cpu_name()}; each stage run side by side with the other candidate, one thread each")
    print("| candidate | codes | AE steps | AE train s | rFID | PSNR (dB) | usage | LDM steps | LDM train s | generation FD | precision | recall | class acc | / real |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ae, gen, cb = r["ae"], r["gen"], r["ae"]["codebook"]
        acc = gen["class_accuracy"] or {}
        ratio = acc["class_accuracy"] / acc["classifier_accuracy_on_real"] if acc else float("nan")
        codes = f"{ae['codebooks']} x {ae['codebook_size']}" if ae["codebooks"] > 1 else str(ae["codebook_size"])
        print(f"| {r['kind']} | {codes} | {r['ae_m'].get('step', '-')} | {r['ae_m'].get('train_seconds', float('nan')):.0f} | {ae['rfid']:.2f} | "
              f"{ae['psnr']:.2f} | {cb['codebook_usage']:.1f}% | {r['ldm_m'].get('step', '-')} | "
              f"{r['ldm_m'].get('train_seconds', float('nan')):.0f} | {gen['fid']:.2f} | {gen['precision']:.3f} | {gen['recall']:.3f} | "
              f"{100 * acc.get('class_accuracy', float('nan')):.1f}% | {ratio:.3f}x |")
    first = rows[0]
    print(f"\nautoencoder calibration ({first['ae']['images']} held-out images): {calibration_line(first['ae']['calibration'])}")
    print(f"generation calibration ({first['gen']['num_real']} held-out images): {calibration_line(first['gen']['calibration'])}")
    print(f"generation: {first['gen']['scheduler']}, {first['gen']['steps']} steps, guidance {first['gen']['guidance']}, "
          f"{first['gen']['num_generated']} generated vs {first['gen']['num_real']} real, {first['gen']['features']} features")
    best = min(rows, key=lambda r: (round(r["gen"]["fid"], 1), r["ae"]["rfid"]))
    print(f"lowest generation FD: {best['kind']} ({best['gen']['fid']:.2f}; rFID {best['ae']['rfid']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
