"""Reads a shapes image (benchmarks/make_shapes_folder.py) back into its attributes by plain image processing.

The background colour is the median of the border pixels; the foreground is the largest connected blob of
pixels farther than ``FOREGROUND_DISTANCE`` from it. Then

* colour: the named colour nearest to the foreground's median RGB;
* position: the quadrant of the foreground's centroid;
* size: the longer side of its bounding box against the midpoint of the small and large sides;
* shape: a triangle (drawn pointing up) is bottom-heavy: its centroid lies 2/3 of the way down its
  bounding box, a circle's or square's halfway; of the others, a square fills its box (ratio 1), a circle
  pi/4 of it.

An image with no blob of at least ``MIN_PIXELS`` pixels (a blank or washed-out sample) has no attributes
and matches no prompt.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from make_shapes_folder import COLOURS, EXTENT, parse_caption

ATTRIBUTES = ("colour", "shape", "size", "position")
FOREGROUND_DISTANCE = 60.0  # RGB distance from the background; every named colour is >= 190 from it
MIN_PIXELS = 8  # at 32 px; a small triangle covers ~40
# Measured on 2,000 rendered images (32 px): the centroid's depth in the box is 0.62-0.67 for triangles,
# 0.46-0.54 for circles and squares; the fill ratio is 0.71-0.85 for circles, 0.97-1 for squares.
TRIANGLE_DEPTH, SQUARE_FILL = 0.58, 0.915


def predict(image: np.ndarray) -> dict[str, str] | None:
    """H x W x 3 uint8 -> {colour, shape, size, position}, or None when no shape is found."""
    img = image.astype(np.float32)[..., :3]
    h, w = img.shape[:2]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    background = np.median(border, axis=0)
    mask = np.linalg.norm(img - background, axis=-1) > FOREGROUND_DISTANCE
    blobs, n = ndimage.label(mask)
    if n == 0:
        return None
    areas = ndimage.sum_labels(mask, blobs, index=np.arange(1, n + 1))
    blob = blobs == 1 + int(np.argmax(areas))
    scale = w / 32.0
    if blob.sum() < MIN_PIXELS * scale**2:
        return None
    ys, xs = np.nonzero(blob)
    rgb = np.median(img[blob], axis=0)
    names = list(COLOURS)
    colour = names[int(np.argmin([np.linalg.norm(rgb - np.array(COLOURS[c])) for c in names]))]
    cy, cx = ys.mean(), xs.mean()
    position = f"{'top' if cy < h / 2 else 'bottom'} {'left' if cx < w / 2 else 'right'}"
    side_y, side_x = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    size = "large" if max(side_y, side_x) > scale * (EXTENT["small"] + EXTENT["large"]) / 2 else "small"
    depth = (cy - ys.min() + 0.5) / side_y  # the centroid's depth in the box: 0.5 symmetric, 2/3 a triangle
    fill = blob.sum() / float(side_y * side_x)
    shape = "triangle" if depth > TRIANGLE_DEPTH else "square" if fill > SQUARE_FILL else "circle"
    return dict(colour=colour, shape=shape, size=size, position=position)


def score(images, prompts) -> dict[str, float]:
    """Fractions of images whose predicted attributes equal their prompt's: ``all`` (every attribute) and
    one per attribute. An image without a shape gets every attribute wrong."""
    hits = {k: 0 for k in ("all", *ATTRIBUTES)}
    for image, prompt in zip(images, prompts, strict=True):
        want, got = parse_caption(prompt), predict(np.asarray(image)) or {}
        ok = [got.get(k) == want[k] for k in ATTRIBUTES]
        hits["all"] += all(ok)
        for k, v in zip(ATTRIBUTES, ok):
            hits[k] += v
    return {k: v / max(1, len(prompts)) for k, v in hits.items()}
