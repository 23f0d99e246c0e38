"""The prompt-matching benchmark's checker (benchmarks/shapes_checker.py) reads real shapes images right and
matches nothing else: the ceiling row of benchmarks/bench_text.py is only meaningful if both hold."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from make_shapes_folder import caption, combinations, make_folder, parse_caption, render, sample_attributes  # noqa: E402
from shapes_checker import ATTRIBUTES, predict, score  # noqa: E402


@pytest.mark.parametrize("seed", [1, 2])
def test_checker_reads_real_images(seed):
    attrs = sample_attributes(400, seed=seed)
    result = score([render(a) for a in attrs], [caption(a) for a in attrs])
    for key in ("all", *ATTRIBUTES):
        assert result[key] >= 0.98, result


def test_checker_reads_64px_images():
    attrs = sample_attributes(100, seed=3)
    assert score([render(a, size=64) for a in attrs], [caption(a) for a in attrs])["all"] >= 0.98


def test_wrong_images_match_no_prompt():
    blank = np.full((32, 32, 3), 40, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert predict(blank) is None
    prompts = [caption(c) for c in combinations()]
    assert score([blank] * len(prompts), prompts)["all"] == 0.0
    assert score([noise] * len(prompts), prompts)["all"] <= 1 / len(prompts)
    # a real image matches its own caption and none of the other 119
    a = sample_attributes(1, seed=4)[0]
    image = render(a)
    matches = [p for p in prompts if score([image], [p])["all"] == 1.0]
    assert matches == [caption(a)]


def test_folder_is_deterministic_and_captioned(tmp_path):
    first = make_folder(tmp_path / "a", 12, seed=5)
    make_folder(tmp_path / "b", 12, seed=5)
    lines = [json.loads(ln) for ln in (tmp_path / "a" / "metadata.jsonl").read_text().splitlines()]
    assert [ln["file_name"] for ln in lines] == [f"{i:05d}.png" for i in range(12)]
    assert [ln["text"] for ln in lines] == [a["text"] for a in first]
    assert all(parse_caption(a["text"]) == {k: a[k] for k in ATTRIBUTES} for a in first)
    for name in ("00000.png", "00011.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
