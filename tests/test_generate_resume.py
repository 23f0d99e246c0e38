"""`vqldm generate` keeps what it made: a folder run stopped half-way keeps every finished image and
`--resume` completes it with the images an uninterrupted run writes; bad arguments stop before any model
is loaded."""

from __future__ import annotations

import json

import pytest

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
])
def test_bad_generation_arguments_fail_before_the_model_loads(argv, message, tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(pipeline_module, "load_pipeline", no_model)
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
