"""Which feature networks can see blur: accuracy and calibration of the shipped Fashion-MNIST classifiers.

    python benchmarks/bench_features.py                       # both shipped networks, n = 250, 500, 1000
    python benchmarks/bench_features.py --features fashion-mnist-detail runs/features_v2 --counts 500

For each feature network: its test accuracy on the 10,000 Fashion-MNIST test images, and, for each
sample count n, the Frechet distance of n held-out reference images to n *other* held-out images (the
real-vs-real floor), to those images blurred by a Gaussian of 0.5 px and 1 px, and with noise of std 0.1
(vqldm's calibration rows: ``vqldm.evaluation.calibration.calibration_rows``). A network is useful for judging an
autoencoder or a generator only if a 0.5 px blur lands well above the floor at the counts evaluation uses.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py

from common import cpu_name, run_main  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", nargs="+", default=["fashion-mnist-classifier", "fashion-mnist-detail"])
    p.add_argument("--counts", type=int, nargs="+", default=[250, 500, 1000])
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from vqldm.evaluation.calibration import REAL_ROW, calibration_rows
    from vqldm.evaluation.features import classifier_accuracy, load_feature_extractor
    from vqldm.data.config import DataConfig
    from vqldm.data.sources import load_datasets

    print(f"CPU: {cpu_name()}, torch threads {torch.get_num_threads()}")
    holdout = load_datasets("fashion-mnist", DataConfig(image_size=32, channels=1, fit="pad"), progress=False).holdout
    if 2 * max(args.counts) > len(holdout):
        raise SystemExit(f"--counts: at most {len(holdout) // 2} (two disjoint sets of the {len(holdout)} test images)")
    names = [REAL_ROW, "blur 0.5px", "blur 1px", "noise std 0.1"]
    print(f"{'features':28s} {'dim':>4s} {'test acc':>8s} {'n':>5s} " + " ".join(f"{n:>14s}" for n in names)
          + f" {'blur0.5/floor':>13s}")
    for name in args.features:
        start = time.perf_counter()
        extractor = load_feature_extractor(name)
        accuracy = classifier_accuracy(extractor.model, holdout)
        for n in args.counts:
            ref = holdout.batch(torch.arange(n))[0]
            probe = holdout.batch(torch.arange(n, 2 * n))[0]
            rows = {r["name"]: r["fd"] for r in calibration_rows(ref, probe, extractor)}
            print(f"{name:28s} {extractor.dim:4d} {100 * accuracy:7.2f}% {n:5d} " + " ".join(f"{rows[k]:14.3f}" for k in names)
                  + f" {rows['blur 0.5px'] / rows[REAL_ROW]:12.1f}x")
        print(f"  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    run_main(main)
