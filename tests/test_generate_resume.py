"""`vqldm generate` keeps what it made: a folder run stopped half-way keeps every finished image and
`--resume` completes it with the images an uninterrupted run writes; file names are as wide as the count
needs; a run the disk cannot hold is refused before its first image; bad arguments stop before any model
is loaded."""

from __future__ import annotations

import json
from collections import namedtuple

import pytest

import vqldm.cli.generate as generate_module
import vqldm.pipelines.pipeline as pipeline_module
from vqldm.cli.main import main

FAST = ["--steps", "2", "--batch-size", "8", "--num-images", "20", "--class", "7", "--no-progress"]


def test_stopped_folder_run_resumes_to_the_uninterrupted_images(tmp_path, monkeypatch, capsys):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(["generate", *FAST, "--out", f"{straight}/"]) == 0

    real_call = pipeline_module.VQLatentDiffusionPipeline.__call__
    calls = {"n": 0}

    def stop_on_second_batch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as Ctrl-C during the second batch
        return real_call(self, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(pipeline_module.VQLatentDiffusionPipeline, "__call__", stop_on_second_batch)
        assert main(["generate", *FAST, "--out", f"{stopped}/"]) == 130
    kept = sorted(p.name for p in stopped.glob("*.png"))
    assert kept == [f"{i:04d}.png" for i in range(8)]  # the first batch survived the stop
    assert json.loads((stopped / "generate.json").read_text())["batches_done"] == 1

    capsys.readouterr()
    assert main(["generate", *FAST, "--out", f"{stopped}/", "--resume"]) == 0
    assert "resumed after image 0008" in capsys.readouterr().out
    names = sorted(p.name for p in straight.glob("*.png"))
    assert names == sorted(p.name for p in stopped.glob("*.png")) and len(names) == 20
    for name in names:
        assert (straight / name).read_bytes() == (stopped / name).read_bytes(), name

    # other settings are not mixed into the folder
    assert main(["generate", *FAST, "--seed", "1", "--out", f"{stopped}/", "--resume"]) == 2
    assert "seed" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--out", "x.gif"], "must end in .png, .jpg or .webp"),
    (["--num-images", "100000000", "--out", "grid.png"], "do not fit one grid"),
    (["--guidance", "nan"], "must be a finite number"),
    (["--out", "grid.png", "--resume"], "--resume continues a folder"),
    (["--out", "/proc/vqldm-test/"], "choose a writable --out"),
    (["--num-images", "0"], "--num-images must be >= 1, got 0"),
    (["--steps", "1.5"], "--steps must be an integer, got '1.5'"),
    (["--scheduler", "plms"], "unknown --scheduler 'plms'; choose one of ddim, ddpm, dpm, euler, unipc"),
    (["--strength", "0.5"], "--strength needs --init-image"),
])
def test_bad_generation_arguments_fail_before_the_model_loads(argv, message, tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(pipeline_module, "load_pipeline", no_model)
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_names_are_as_wide_as_the_count_needs():
    assert [generate_module._name_width(n) for n in (1, 16, 10_000, 10_001, 100_000, 100_001)] == [4, 4, 4, 5, 5, 6]


def test_wide_names_sort_and_resume(tmp_path, monkeypatch, capsys):
    """The width rule at a size a test can afford (names of at least 1 digit instead of 4): 12 images are
    00..11, a resume keeps the width its manifest records, and one past it is refused before any model loads."""
    monkeypatch.setattr(generate_module, "MIN_NAME_WIDTH", 1)
    out = f"{tmp_path / 'imgs'}/"
    argv = ["generate", "--steps", "2", "--batch-size", "8", "--no-progress", "--out", out]
    assert main([*argv, "--num-images", "8"]) == 0
    assert sorted(p.name for p in (tmp_path / "imgs").glob("*.png")) == [f"{i}.png" for i in range(8)]
    assert main([*argv, "--num-images", "10", "--resume"]) == 0  # 8 and 9 still fit one digit
    assert json.loads((tmp_path / "imgs" / "generate.json").read_text())["name_width"] == 1
    capsys.readouterr()

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the names were checked")

    with monkeypatch.context() as mp:
        mp.setattr(pipeline_module, "load_pipeline", no_model)
        assert main([*argv, "--num-images", "12", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--num-images 12 needs 2-digit file names" in err[0] and "--num-images 10 or fewer" in err[0]

    fresh = tmp_path / "fresh"
    assert main([*argv[:-1], f"{fresh}/", "--num-images", "12"]) == 0
    names = sorted(p.name for p in fresh.glob("*.png"))
    assert names == [f"{i:02d}.png" for i in range(12)]  # sorted by name = sorted by index


Usage = namedtuple("Usage", "total used free")


def test_a_run_the_disk_cannot_hold_is_refused_before_the_first_image(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "imgs"
    per_image = generate_module._bytes_per_image((1, 32, 32), tmp_path)  # the shipped model's 32x32 grey images
    argv = ["generate", "--steps", "2", "--batch-size", "2", "--no-progress", "--out", f"{folder}/"]
    monkeypatch.setattr(generate_module.shutil, "disk_usage", lambda path: Usage(10**12, 0, 3 * per_image))

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampling started before the disk was checked")

    with monkeypatch.context() as mp:
        mp.setattr(pipeline_module.VQLatentDiffusionPipeline, "__call__", no_sampling)
        assert main([*argv, "--num-images", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vqldm: error: 4 images of 32x32x1 need about ")
    assert f"only {generate_module._format_bytes(3 * per_image)} is free" in err[0]
    assert not folder.exists()  # nothing written, not even the folder

    assert main([*argv, "--num-images", "2"]) == 0  # 2 images fit in 3 images' space
    # --resume counts only the images still to write: 2 more fit although 4 in all would not
    assert main([*argv, "--num-images", "4", "--resume"]) == 0
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{i:04d}.png" for i in range(4)]
