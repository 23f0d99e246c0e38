"""``vqldm generate`` end to end on tiny random-weight pipeline folders, and its one-line errors (exit 2)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vqldm.cli import main as cli
from test_pipeline_helpers import tiny_pipeline, tiny_unet


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    cond = tiny_pipeline(num_classes=3)
    cond.info = {"class_names": ["shirt", "bag", "boot"]}
    cond.save_pretrained(root / "cond")
    tiny_pipeline().save_pretrained(root / "uncond")
    # mismatched UNets: wrong latent channels, wrong latent size
    for name, unet in (("bad_channels", tiny_unet(latent_channels=4)), ("bad_size", tiny_unet(latent_size=4))):
        shutil.copytree(root / "uncond", root / name)
        shutil.rmtree(root / name / "unet")
        unet.save_pretrained(root / name / "unet", safe_serialization=True)
    (root / "not_an_image.png").write_text("hello")
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(root / "init.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[:, :8] = 255
    Image.fromarray(mask).save(root / "mask.png")
    (root / "empty").mkdir()
    return root


def run(capsys, *argv):
    code = cli.main(["generate", "--no-progress", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_grid_and_folder_outputs(folders, tmp_path, capsys):
    code, out, err = run(capsys, "--model", folders / "cond", "--num-images", 3, "--batch-size", 2, "--steps", 2,
                         "--out", tmp_path / "grid.png")
    assert code == 0, err
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (2 + 2 * 18, 2 + 2 * 18)  # 3 images of 16x16 in a 2x2 grid, padding 2
    code, out, err = run(capsys, "--model", folders / "cond", "--num-images", 3, "--steps", 2, "--class", "boot",
                         "--guidance", 2, "--scheduler", "dpm", "--out", f"{tmp_path / 'imgs'}/")
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    assert files == ["0000.png", "0001.png", "0002.png", "generate.json"]  # + the manifest --resume reads
    assert not [p for p in tmp_path.rglob(".*tmp*")]  # atomic writes leave no temporaries


def test_same_seed_same_file_bytes(folders, tmp_path, capsys):
    for name in ("a.png", "b.png"):
        code, _, err = run(capsys, "--model", folders / "uncond", "--num-images", 2, "--steps", 2, "--seed", 9,
                           "--out", tmp_path / name)
        assert code == 0, err
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_img2img_inpaint_and_interpolation(folders, tmp_path, capsys):
    code, _, err = run(capsys, "--model", folders / "uncond", "--init-image", folders / "init.png", "--strength", 0.3,
                       "--steps", 4, "--num-images", 2, "--out", tmp_path / "i2i.png")
    assert code == 0, err
    code, _, err = run(capsys, "--model", folders / "uncond", "--init-image", folders / "init.png", "--mask",
                       folders / "mask.png", "--steps", 3, "--num-images", 1, "--out", tmp_path / "inpaint.png")
    assert code == 0, err
    code, _, err = run(capsys, "--model", folders / "cond", "--seed", 1, "--interpolate", 2, "--frames", 3, "--steps", 2,
                       "--class", 0, "--out", tmp_path / "walk.png")
    assert code == 0, err
    assert Image.open(tmp_path / "walk.png").size == (2 + 3 * 18, 2 + 18)  # one row of 3 frames


def _assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("vqldm: error:")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--model", "{root}/empty"], ["not a pipeline folder"]),
        (["--model", "{root}/does_not_exist"], ["not found"]),
        (["--model", "{root}/bad_channels"], ["latent channels"]),
        (["--model", "{root}/bad_size"], ["sample_size"]),
        (["--model", "{root}/cond", "--class", "3"], ["out of range"]),
        (["--model", "{root}/cond", "--class", "hat"], ["unknown class"]),
        (["--model", "{root}/uncond", "--guidance", "3"], ["unconditional"]),
        (["--model", "{root}/uncond", "--class", "1"], ["unconditional"]),
        (["--model", "{root}/uncond", "--scheduler", "plms"], ["unknown --scheduler 'plms'", "dpm"]),
        (["--model", "{root}/uncond", "--init-image", "{root}/not_an_image.png"], ["not a readable image"]),
        (["--model", "{root}/uncond", "--init-image", "{root}/missing.png"], ["not found"]),
        (["--model", "{root}/uncond", "--mask", "{root}/mask.png"], ["--mask needs --init-image"]),
        (["--model", "{root}/uncond", "--steps", "0"], ["--steps must be >= 1, got 0"]),
        (["--model", "{root}/uncond", "--steps", "100000"], ["--steps 100000 is more than the 1000 timesteps", "--steps 1..1000"]),
        (["--model", "{root}/uncond", "--steps", "many"], ["--steps must be an integer, got 'many'"]),
        (["--model", "{root}/uncond", "--dtype", "fp8"], ["unknown --dtype 'fp8'", "fp32, fp16, bf16"]),
        (["--model", "{root}/uncond", "--dtype", "fp16", "--device", "cpu"], ["--dtype fp16 is for CUDA GPUs"]),
        (["--model", "{root}/uncond", "--device", "tpu:x"], ["--device must be cpu, cuda, cuda:N or auto"]),
        (["--model", "{root}/uncond", "--guidance", "0"], ["--guidance must be > 0, got 0"]),
        (["--model", "{root}/uncond", "--guidance", "inf"], ["--guidance must be a finite number"]),
        (["--model", "{root}/uncond", "--eta", "2"], ["--eta must be between 0 and 1"]),
        (["--model", "{root}/uncond", "--top-k", "5"], ["--top-k is for priors"]),
        (["--model", "{root}/uncond", "--top-p", "1.5"], ["--top-p must be in (0, 1]"]),
        (["--model", "{root}/uncond", "--freeze-unet"], ["unrecognized arguments: --freeze-unet"]),
        (["--model", "{root}/uncond", "--unet-path", "fast"], ["unknown --unet-path 'fast'", "auto, eager, frozen"]),
        (["--model", "{root}/uncond", "--out", "{root}/x.gif"], [".png, .jpg or .webp"]),
        (["--model", "{root}/uncond", "--scheduler-option", "spacing"], ["--scheduler-option must be KEY=VALUE", "timestep_spacing=trailing"]),
        (["--model", "{root}/uncond", "--scheduler", "dpm", "--scheduler-option", "nonsense=1"],
         ["--scheduler-option nonsense=1", "scheduler 'dpm' has no option 'nonsense'"]),
        (["--model", "{root}/uncond", "--scheduler-option", "timestep_spacing=sideways"], ["--scheduler-option timestep_spacing=sideways"]),
    ],
)
def test_errors_are_one_line_exit_2(folders, capsys, argv, needles):
    argv = [a.format(root=folders) for a in argv]
    code, _, err = run(capsys, "--steps", 1, *argv) if "--steps" not in argv else run(capsys, *argv)
    _assert_one_line_error(code, err, *needles)


def test_parser_types_and_choices(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["generate"])
    assert (args.unet_path, args.dtype, args.scheduler, args.eta) == ("auto", "fp32", None, None)
    assert parser.parse_args(["generate", "--unet-path", "eager"]).unet_path == "eager"
    assert parser.parse_args(["generate", "--scheduler", "DPM"]).scheduler == "dpm"  # names are case-blind
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "--help"])
    help_text = capsys.readouterr().out
    assert "--unet-path" in help_text and "--freeze-unet" not in help_text


def test_top_level_help_imports_neither_torch_nor_diffusers():
    """`vqldm --help` and a training command's --help answer without the pipelines' imports (seconds of
    torch + diffusers), and still list every command; `vqldm generate --help` builds its full parser."""
    import subprocess
    import sys

    probe = ("import sys\nfrom vqldm.cli.main import main\n"
             "for argv in (['--help'], ['train-prior', '--help']):\n"
             "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
             "print('HEAVY', sorted(m for m in ('torch', 'diffusers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEAVY []" in done.stdout
    for command in ("train-autoencoder", "train-diffusion", "train-prior", "shard", "generate", "evaluate"):
        assert command in done.stdout
    parser = cli.build_parser(["generate", "--steps", "2"])
    assert parser.parse_args(["generate", "--steps", "2"]).steps == 2


def test_scheduler_options_change_the_sampler_and_are_part_of_resume(folders, tmp_path, capsys):
    from vqldm.cli.generate import set_sampler
    from vqldm.pipelines.pipeline import VQLatentDiffusionPipeline

    code, _, err = run(capsys, "--model", folders / "uncond", "--scheduler-option", "nonsense=1", "--steps", 2,
                       "--out", f"{tmp_path / 'never'}/")
    _assert_one_line_error(code, err, "--scheduler-option nonsense=1")
    assert not (tmp_path / "never").exists()  # refused before the output folder is made
    images = {}
    for spacing in ("leading", "trailing"):
        out = tmp_path / spacing
        code, _, err = run(capsys, "--model", folders / "uncond", "--num-images", 2, "--steps", 3, "--scheduler", "ddim",
                           "--scheduler-option", f"timestep_spacing={spacing}", "--out", f"{out}/")
        assert code == 0, err
        images[spacing] = np.asarray(Image.open(out / "0000.png"), dtype=np.float32)
    assert np.abs(images["leading"] - images["trailing"]).max() > 1  # other timesteps, other images
    code, _, err = run(capsys, "--model", folders / "uncond", "--num-images", 4, "--steps", 3, "--scheduler", "ddim",
                       "--scheduler-option", "timestep_spacing=leading", "--out", f"{tmp_path / 'trailing'}/", "--resume")
    _assert_one_line_error(code, err, "scheduler_options differs")
    # the Python side: no name keeps the current kind; options merge over the model's measured defaults
    pipe = VQLatentDiffusionPipeline.from_pretrained(folders / "uncond")
    kind = type(pipe.scheduler)
    set_sampler(pipe, None, [("timestep_spacing", "trailing")])
    assert type(pipe.scheduler) is kind and pipe.scheduler.config.timestep_spacing == "trailing"
    pipe.info.update(default_scheduler="unipc", default_scheduler_options={"timestep_spacing": "trailing"})
    pipe.set_scheduler(solver_order=3)
    assert (pipe.scheduler.config.timestep_spacing, pipe.scheduler.config.solver_order) == ("trailing", 3)


def test_resume_ignores_the_unet_path_and_refuses_a_foreign_manifest(folders, tmp_path, capsys):
    import json

    out = f"{tmp_path / 'imgs'}/"
    code, _, err = run(capsys, "--model", folders / "uncond", "--num-images", 2, "--steps", 2, "--out", out)
    assert code == 0, err
    code, out_text, err = run(capsys, "--model", folders / "uncond", "--num-images", 2, "--steps", 2, "--out", out,
                              "--resume", "--unet-path", "frozen")
    assert code == 0, err
    assert "nothing to do" in out_text
    manifest = tmp_path / "imgs" / "generate.json"
    data = json.loads(manifest.read_text())
    del data["name_width"]  # not a manifest this generate wrote: no guessing
    manifest.write_text(json.dumps(data))
    code, _, err = run(capsys, "--model", folders / "uncond", "--num-images", 2, "--steps", 2, "--out", out, "--resume")
    _assert_one_line_error(code, err, "has no name_width", "drop --resume")


def test_missing_shipped_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import vqldm.pipelines.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "DEFAULT_MODEL_DIR", tmp_path)
    code, _, err = run(capsys, "--steps", 1, "--out", tmp_path / "x.png")
    _assert_one_line_error(code, err, "shipped model is missing")


def test_loaders_raise_in_api_terms(folders, tmp_path):
    from vqldm.pipelines.pipeline import load_pipeline
    from vqldm.pipelines.sampler import ModelFolderError, load_sampler

    with pytest.raises(ValueError, match="dtype 'fp16' \\(autocast\\) is for CUDA GPUs"):
        load_pipeline(str(folders / "uncond"), device="cpu", dtype="fp16")
    with pytest.raises(ValueError, match="unknown device 'gpu7'"):
        load_sampler(str(folders / "uncond"), device="gpu7")
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.ckpt")
    for path, fragment in ((folders / "empty", "no model_index.json"), (folders / "does_not_exist", "not found"),
                           (folders / "bad_size", "sample_size"), (tmp_path / "model.ckpt", "is a pickle file")):
        with pytest.raises(ModelFolderError, match=fragment):  # a ValueError, whatever the check that found it
            load_sampler(str(path))
    pipe = load_sampler(str(folders / "uncond"), device="cpu")
    assert type(pipe).__name__ == "VQLatentDiffusionPipeline" and pipe.device == torch.device("cpu")
