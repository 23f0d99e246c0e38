"""A small colour image folder for measurements: random 64x64 crops of the natural photos scikit-image ships.

    pip install scikit-image          # benchmark-only; not a vqldm dependency
    python benchmarks/make_colour_folder.py bench_out/colour_folder --count 1500
    python benchmarks/make_colour_folder.py bench_out/colour_classes --count 400 --classes   # one subfolder per photo

Each crop takes a random photo, a random square of side 64 to half the photo's shorter side (so textures
appear at several scales), a random position and a random left-right flip, resized to 64x64 (Lanczos)
and saved as PNG. The same seed writes the same files. It stands in for "a folder of one's own photos"
(issue 12: 1,432 RGB images at 64x64), with the saturated reds, blues and purples that a starved codebook
loses first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

# skimage.data photos that ship with the wheel (no download): name -> loader name
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "retina", "immunohistochemistry", "hubble_deep_field",
          "stereo_motorcycle")


def load_photos() -> dict[str, np.ndarray]:
    try:
        import skimage.data
    except ImportError:
        raise SystemExit("needs scikit-image (benchmark-only): pip install scikit-image") from None
    photos = {}
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
            img = img[0]
        photos[name] = np.ascontiguousarray(img[..., :3])
    return photos


def make_folder(out: Path, count: int, size: int = 64, seed: int = 0, classes: bool = False) -> Path:
    photos = load_photos()
    names = list(photos)
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = names[int(rng.integers(len(names)))]
        img = photos[name]
        h, w = img.shape[:2]
        side = int(rng.integers(size, max(size + 1, min(h, w) // 2 + 1)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(img[top:top + side, left:left + side]).resize((size, size), Image.Resampling.LANCZOS)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        folder = out / name if classes else out
        folder.mkdir(exist_ok=True)
        crop.save(folder / f"{i:05d}.png")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--count", type=int, default=1500)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", action="store_true", help="one subfolder per source photo (for --labels folders)")
    args = ap.parse_args()
    make_folder(args.out, args.count, args.size, args.seed, args.classes)
    print(f"wrote {args.count} {args.size}x{args.size} crops to {args.out}")


if __name__ == "__main__":
    main()
