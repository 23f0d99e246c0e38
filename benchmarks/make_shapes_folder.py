"""A captioned image folder whose captions a program can check: one shape of a named colour, size and position.

    python benchmarks/make_shapes_folder.py bench_out/shapes --count 2000 --size 32 --seed 0

Each image is one filled shape (square, circle or triangle) of one of five well separated colours, small or
large, centred in one quadrant (top left, top right, bottom left, bottom right, jittered a little), on a
dark grey background with light pixel noise. The caption says all four, e.g. "a large red circle at the top
left", and goes to ``OUT/metadata.jsonl`` in the Hugging Face ``imagefolder`` convention (one JSON object a
line, ``{"file_name": "00000.png", "text": "..."}``). 5 x 3 x 2 x 4 = 120 combinations; at 32 px a small
shape spans 9 px and a large one 14, so a quadrant holds either and ``shapes_checker.py`` reads every
attribute back by plain image processing (the prompt-matching benchmark, benchmarks/bench_text.py).
The same seed writes the same files.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Named colours (RGB), far apart from each other and from the background (pairwise distance >= 150).
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 230), "yellow": (235, 215, 50),
           "white": (235, 235, 235)}
SHAPES = ("square", "circle", "triangle")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
BACKGROUND = (40, 40, 40)
NOISE_STD = 3.0  # pixel noise, 8-bit units: "lightly noisy", far below the foreground threshold
# Side of the shape's bounding box and the jitter of its centre, in pixels of a 32 px image (scaled with
# the image): the large side plus twice its jitter fits a 16 px quadrant, so the shape stays in its quadrant.
EXTENT = {"small": 9.0, "large": 14.0}
JITTER = {"small": 2.5, "large": 1.0}
SUPERSAMPLE = 4  # drawn at 4x and box-filtered down: anti-aliased edges, as a decoder draws them


def combinations() -> list[dict[str, str]]:
    """Every (colour, shape, size, position), 120 in all, in a fixed order."""
    return [dict(colour=c, shape=s, size=z, position=p) for c, s, z, p in itertools.product(COLOURS, SHAPES, SIZES, POSITIONS)]


def caption(attrs: dict) -> str:
    """The prompt of an attribute dict: "a large red circle at the top left"."""
    return f"a {attrs['size']} {attrs['colour']} {attrs['shape']} at the {attrs['position']}"


def parse_caption(text: str) -> dict[str, str]:
    """The inverse of ``caption``."""
    words = text.split()
    if len(words) < 7 or words[0] != "a" or words[4:6] != ["at", "the"]:
        raise ValueError(f"not a shapes caption: {text!r}")
    return dict(size=words[1], colour=words[2], shape=words[3], position=" ".join(words[6:]))


def sample_attributes(count: int, seed: int = 0, combos: list[dict] | None = None) -> list[dict]:
    """``count`` attribute dicts (colour, shape, size, position and the geometry ``cx``, ``cy``, ``extent``
    in pixels of a 32 px image), drawn uniformly from ``combos`` (default: all combinations)."""
    combos = combos or combinations()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        a = dict(combos[int(rng.integers(len(combos)))])
        row, col = a["position"].split()
        jitter = JITTER[a["size"]]
        a["cx"] = (8.0 if col == "left" else 24.0) + float(rng.uniform(-jitter, jitter))
        a["cy"] = (8.0 if row == "top" else 24.0) + float(rng.uniform(-jitter, jitter))
        a["extent"] = EXTENT[a["size"]]
        a["noise_seed"] = int(rng.integers(2**31))
        out.append(a)
    return out


def render(attrs: dict, size: int = 32) -> np.ndarray:
    """One attribute dict -> a ``size`` x ``size`` x 3 uint8 image."""
    k = SUPERSAMPLE * size / 32.0  # supersampled pixels per pixel of a 32 px image
    img = Image.new("RGB", (size * SUPERSAMPLE,) * 2, BACKGROUND)
    draw = ImageDraw.Draw(img)
    cx, cy, h = attrs["cx"] * k, attrs["cy"] * k, attrs["extent"] * k / 2
    box = (cx - h, cy - h, cx + h, cy + h)
    fill = COLOURS[attrs["colour"]]
    if attrs["shape"] == "square":
        draw.rectangle(box, fill=fill)
    elif attrs["shape"] == "circle":
        draw.ellipse(box, fill=fill)
    else:  # an upward isosceles triangle filling its bounding box's base and height
        draw.polygon([(cx - h, cy + h), (cx + h, cy + h), (cx, cy - h)], fill=fill)
    arr = np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    noise = np.random.default_rng(attrs["noise_seed"]).normal(0.0, NOISE_STD, arr.shape)
    return np.clip(np.rint(arr + noise), 0, 255).astype(np.uint8)


def make_folder(out: Path, count: int, size: int = 32, seed: int = 0, combos: list[dict] | None = None) -> list[dict]:
    """Write ``count`` images and ``metadata.jsonl`` to ``out``; returns their attribute dicts (with ``file_name``
    and ``text``)."""
    out.mkdir(parents=True, exist_ok=True)
    attrs = sample_attributes(count, seed, combos)
    lines = []
    for i, a in enumerate(attrs):
        a["file_name"], a["text"] = f"{i:05d}.png", caption(a)
        Image.fromarray(render(a, size)).save(out / a["file_name"])
        lines.append(json.dumps({"file_name": a["file_name"], "text": a["text"]}))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return attrs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    make_folder(args.out, args.count, args.size, args.seed)
    print(f"wrote {args.count} {args.size}x{args.size} captioned shapes to {args.out} (metadata.jsonl)")


if __name__ == "__main__":
    main()
