"""Bad input to ``vqldm train-autoencoder`` / ``vqldm convert``: one line on stderr, exit code 2, no traceback,
and nothing written (a failed start creates no run folder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vqldm.plumbing.checkpoint import save_training_checkpoint
from vqldm.cli.main import main

FAST = ["--set", "train.progress=false", "--max-steps", "2"]


def good_images(folder, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((16, 16), 10 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def truncated_png(path):
    """The first half of a valid noisy PNG: the header is fine, the pixel data stops early."""
    noise = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def run_error(capsys, argv) -> str:
    """Run the CLI, expect exit 2 and exactly one stderr line; return that line."""
    code = main(argv)
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert code == 2, (code, captured.err[-2000:])
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("vqldm: error: ")
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def ae(data, out, *extra):
    return ["train-autoencoder", "--config", "tiny", "--data", str(data), "--out", str(out), *FAST, *extra]


def test_missing_data_path(tmp_path, capsys):
    line = run_error(capsys, ae(tmp_path / "nope", tmp_path / "run"))
    assert "not found" in line and "nope" in line
    assert not (tmp_path / "run").exists()


def test_data_path_is_a_file(tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"png?")
    assert "is a file" in run_error(capsys, ae(tmp_path / "x.png", tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "is empty" in run_error(capsys, ae(tmp_path / "empty", tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_only_corrupt_images_is_an_error(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "zero.png").write_bytes(b"")
    truncated_png(data / "truncated.png")
    (data / "fake.jpg").write_text("not a jpeg")
    line = run_error(capsys, ae(data, tmp_path / "run"))
    assert "no usable image" in line and "3 files skipped" in line
    assert not (tmp_path / "run").exists()


def test_corrupt_image_among_good_ones_is_skipped_with_a_warning(tmp_path, capsys):
    data = good_images(tmp_path / "data", 6)
    truncated_png(data / "truncated.png")
    assert main(ae(data, tmp_path / "run")) == 0
    captured = capsys.readouterr()
    assert "warning: skipped 1 of 7 files" in captured.err and "1 truncated" in captured.err  # warnings go to stderr
    assert (tmp_path / "run" / "vqvae" / "config.json").is_file()


def test_labels_folders_without_subfolders(tmp_path, capsys):
    data = good_images(tmp_path / "data")
    assert "one subfolder per class" in run_error(capsys, ae(data, tmp_path / "run", "--labels", "folders"))


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("model.codebook_sizes=8", "unknown config key 'model.codebook_sizes'"),
        ("trian.lr=1", "unknown config key 'trian'"),
        ("train.lr=fast", "config key 'train.lr' must be a number"),
        ("train.max_steps=many", "config key 'train.max_steps' must be an integer"),
        ("data.fit=stretch", "config key 'data.fit'"),
        ("data.channels=2", "data.channels must be 1 or 3"),
    ],
)
def test_config_errors_name_the_key(tmp_path, capsys, override, fragment):
    data = good_images(tmp_path / "data")
    assert fragment in run_error(capsys, ae(data, tmp_path / "run", "--set", override))
    assert not (tmp_path / "run").exists()


def test_unknown_key_in_a_config_file(tmp_path, capsys):
    cfg = tmp_path / "my.yaml"
    cfg.write_text("data:\n  image_size: 16\nmodel:\n  block_out_channels: [8, 16]\n  norm_num_groups: 4\n  colour: red\n")
    data = good_images(tmp_path / "data")
    line = run_error(capsys, ["train-autoencoder", "--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "run")])
    assert "unknown config key 'model.colour'" in line


def test_missing_config_and_malformed_set(tmp_path, capsys):
    data = good_images(tmp_path / "data")
    line = run_error(capsys, ["train-autoencoder", "--config", "no-such-preset", "--data", str(data), "--out", str(tmp_path / "r")])
    assert "not found" in line and "tiny" in line
    assert "section.key=value" in run_error(capsys, ae(data, tmp_path / "run", "--set", "train.lr"))


def test_impossible_size(tmp_path, capsys):
    data = good_images(tmp_path / "data")
    line = run_error(capsys, ae(data, tmp_path / "run", "--set", "data.image_size=17"))
    assert "not divisible by the downsampling factor 2" in line and "data.image_size" in line
    line = run_error(capsys, ae(data, tmp_path / "run", "--set", "model.block_out_channels=[8,8,8,8]",
                                   "--set", "data.image_size=20"))
    assert "not divisible by the downsampling factor 8" in line
    assert not (tmp_path / "run").exists()


def test_max_steps_zero(tmp_path, capsys):
    data = good_images(tmp_path / "data")
    assert "--max-steps must be >= 1" in run_error(capsys, ae(data, tmp_path / "run", "--max-steps", "0"))


@pytest.mark.parametrize("argv, line", [
    (["train-autoencoder", "--config", "tiny", "--max-steps", "-1"], "vqldm: error: --max-steps must be >= 1, got -1"),
    (["train-autoencoder", "--config", "tiny", "--max-steps", "ten"], "vqldm: error: --max-steps must be an integer, got 'ten'"),
    (["train-autoencoder", "--data", "x"], "vqldm: error: the following arguments are required: --config"),
    (["train-autoencoder", "--config", "tiny", "--labels", "files"], "vqldm: error: unknown --labels 'files'; choose one of none, folders"),
    (["train-prior", "--kind", "diffusion", "--config", "tiny", "--autoencoder", "x"],
     "vqldm: error: unknown --kind 'diffusion'; choose one of masked, autoregressive"),
    (["generate", "--num-images", "-3"], "vqldm: error: --num-images must be >= 1, got -3"),
    (["generate", "--unet-path", "fast"], "vqldm: error: unknown --unet-path 'fast'; choose one of auto, eager, frozen"),
    (["generate", "--freeze-unet"], "vqldm: error: unrecognized arguments: --freeze-unet"),
    (["no-such-command"], "vqldm: error: unknown COMMAND 'no-such-command'; choose one of train-autoencoder, convert"),
])
def test_argparse_errors_follow_the_one_line_convention(argv, line, tmp_path, capsys, monkeypatch):
    """argparse's own refusals (types, choices, required and unknown options) read like every other error:
    one line in flag words, exit 2, no usage block, nothing created."""
    monkeypatch.chdir(tmp_path)
    assert run_error(capsys, argv).startswith(line)
    assert not list(tmp_path.iterdir())


def test_output_path_not_writable(tmp_path, capsys):
    data = good_images(tmp_path / "data")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert "is a file" in run_error(capsys, ae(data, blocker))
    line = run_error(capsys, ae(data, blocker / "run"))
    assert "cannot create output folder" in line
    assert blocker.read_text() == "x"


def _fake_run(out, model_tensors):
    save_training_checkpoint(out, 4, {"model": model_tensors, "optimizer": {}, "rng": {}},
                             {"step": 4, "optimizer": {"param_groups": [], "scalars": {}}})


def test_existing_run_needs_resume(tmp_path, capsys):
    data = good_images(tmp_path / "data")
    _fake_run(tmp_path / "run", {"w": torch.zeros(1)})
    assert "--resume" in run_error(capsys, ae(data, tmp_path / "run"))


def test_resume_with_a_checkpoint_of_another_model(tmp_path, capsys):
    data = good_images(tmp_path / "data")
    _fake_run(tmp_path / "run", {"w": torch.zeros(1)})
    line = run_error(capsys, ae(data, tmp_path / "run", "--resume"))
    assert "does not match this config" in line and "step-00000004" in line


def test_resume_with_a_corrupt_checkpoint(tmp_path, capsys):
    data = good_images(tmp_path / "data")
    _fake_run(tmp_path / "run", {"w": torch.zeros(1)})
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000004"
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 20)
    assert "corrupt" in run_error(capsys, ae(data, tmp_path / "run", "--resume"))
    (ckpt / "state.json").write_text("{ not json")
    assert "state.json" in run_error(capsys, ae(data, tmp_path / "run", "--resume"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_convert_without_trust_flag_and_missing_source(tmp_path, capsys):
    torch.save({"w": torch.ones(2)}, tmp_path / "model.pt")
    assert "--trust-pickle" in run_error(capsys, ["convert", str(tmp_path / "model.pt")])
    assert not (tmp_path / "model.safetensors").exists()
    assert "not found" in run_error(capsys, ["convert", str(tmp_path / "missing.pt"), "--trust-pickle"])
    (tmp_path / "junk.bin").write_bytes(b"\x80\x04junk")
    assert "could not read" in run_error(capsys, ["convert", str(tmp_path / "junk.bin"), "--trust-pickle"])
    torch.save([1, 2, 3], tmp_path / "list.pt")
    assert "state dict" in run_error(capsys, ["convert", str(tmp_path / "list.pt"), "--trust-pickle"])


def test_output_folder_without_write_permission(tmp_path, capsys, monkeypatch):
    data = good_images(tmp_path / "data")
    # as root every folder is writable, so the permission answer is what we change here
    monkeypatch.setattr("vqldm.plumbing.runs.os.access", lambda path, mode: False)
    line = run_error(capsys, ae(data, tmp_path / "locked" / "run"))
    assert "is not writable" in line and "choose a writable --out" in line
    assert not (tmp_path / "locked").exists()


def test_mismatch_message_names_the_tensor_and_both_shapes():
    from vqldm.plumbing.checkpoint import describe_load_error

    layer = torch.nn.Linear(3, 4)
    with pytest.raises(RuntimeError) as err:
        layer.load_state_dict({"weight": torch.zeros(5, 3), "bias": torch.zeros(4)})
    assert describe_load_error(err.value) == "weight has shape [5, 3] in the checkpoint, [4, 3] in this config"
    with pytest.raises(RuntimeError) as err:
        layer.load_state_dict({"weight": torch.zeros(4, 3)})
    assert describe_load_error(err.value).startswith('Missing key(s) in state_dict: "bias"')
