"""``--resume`` continues a run: same data order, same RNG streams, same optimizer and quantizer state, so an
interrupted-and-resumed run ends with exactly the weights of an uninterrupted one. A seed fixes the run."""

from __future__ import annotations

import json

import pytest
import torch

from vqldm.plumbing.checkpoint import list_checkpoints, load_training_checkpoint
from vqldm.autoencoder.model import AutoencoderModelConfig, VQAutoencoder, build_vqmodel
from vqldm.autoencoder.quantizer import QuantizerConfig
from vqldm.cli.main import main

FAST = ["--set", "train.progress=false", "--set", "train.checkpoint_every=3", "--set", "train.keep_checkpoints=10",
        "--set", "train.image_every=100", "--set", "train.log_every=3", "--set", "data.holdout_fraction=0.2"]


def train(folder, out, *extra) -> int:
    return main(["train-autoencoder", "--config", "tiny", "--data", str(folder), "--out", str(out), *FAST, *extra])


def assert_same_files(a: dict, b: dict, what: str) -> None:
    assert set(a) == set(b), what
    for name in a:
        assert set(a[name]) == set(b[name]), (what, name)
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{what}: {name}/{key} differs"


@pytest.fixture(scope="module")
def straight_and_resumed(image_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    straight, resumed = root / "straight", root / "resumed"
    assert train(image_folder, straight, "--max-steps", "12") == 0
    assert train(image_folder, resumed, "--max-steps", "6") == 0  # an interrupted run: stops at step 6
    assert train(image_folder, resumed, "--max-steps", "12", "--resume") == 0
    return straight, resumed


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(straight_and_resumed):
    straight, resumed = straight_and_resumed
    assert [p.name for p in list_checkpoints(straight)] == [f"step-{s:08d}" for s in (3, 6, 9, 12)]
    assert [p.name for p in list_checkpoints(resumed)] == [f"step-{s:08d}" for s in (3, 6, 9, 12)]
    for step in (6, 12):  # same seed -> same first half; resume -> same second half
        a, state_a = load_training_checkpoint(straight / "checkpoints" / f"step-{step:08d}")
        b, state_b = load_training_checkpoint(resumed / "checkpoints" / f"step-{step:08d}")
        # model (incl. codebook, EMA cluster sizes, restart counters), optimizer moments, RNG states
        assert_same_files(a, b, f"step {step}")
        assert state_a["step"] == state_b["step"] == step
        assert state_a["optimizer"] == state_b["optimizer"]
    exported_a = (straight / "vqvae" / "diffusion_pytorch_model.safetensors").read_bytes()
    exported_b = (resumed / "vqvae" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert exported_a == exported_b
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (straight, resumed))
    assert ma["step"] == mb["step"] == 12
    assert ma["scaling_factor"] == mb["scaling_factor"] and ma["holdout"]["psnr"] == mb["holdout"]["psnr"]


def test_resume_continues_from_the_newest_checkpoint(straight_and_resumed):
    _, resumed = straight_and_resumed
    rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "train/loss" in r]
    assert train_steps == [3, 6, 9, 12]  # the second session started at step 7, not at 1


def test_finished_run_resumed_with_more_steps_and_without_any(image_folder, straight_and_resumed, tmp_path, capsys):
    straight, _ = straight_and_resumed
    # --resume in an empty folder starts a new run, and says so
    assert train(image_folder, tmp_path / "fresh", "--max-steps", "2", "--resume") == 0
    assert "no checkpoint in" in capsys.readouterr().out
    # a finished run resumed with the same max_steps: nothing to train, the export is rewritten identically
    before = (straight / "vqvae" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert train(image_folder, straight, "--max-steps", "12", "--resume") == 0
    assert (straight / "vqvae" / "diffusion_pytorch_model.safetensors").read_bytes() == before


def test_seed_fixes_initialisation():
    cfg = AutoencoderModelConfig(block_out_channels=[8, 16], latent_channels=3, codebook_size=16, norm_num_groups=4,
                                 mid_block_add_attention=False)

    def build(seed):
        torch.manual_seed(seed)
        model = VQAutoencoder(build_vqmodel(cfg, 16, 1), QuantizerConfig(), seed=seed)
        model.train()
        model(torch.linspace(-1, 1, 2 * 16 * 16).reshape(2, 1, 16, 16))  # k-means init of the codebook
        return model.state_dict()

    a, b, c = build(0), build(0), build(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


PERCEPTUAL = ["--set", "loss.frequency_weight=1", "--set", "loss.disc_weight=0.5", "--set", "loss.disc_start=2",
              "--set", "loss.disc_ramp_steps=4", "--set", "loss.disc_loss=non_saturating", "--set", "loss.lecam_weight=0.1",
              "--set", "loss.disc_layers=1", "--set", "loss.disc_channels=8"]


def test_perceptual_stage_one_ramps_in_and_resumes_exactly(image_folder, tmp_path):
    """Frequency loss + PatchGAN (non-saturating, LeCAM, ramp): the discriminator, its optimizer and the LeCAM
    anchors resume with the run, and the decoder's adversarial weight rises linearly from disc_start."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(image_folder, straight, "--max-steps", "9", *PERCEPTUAL) == 0
    assert train(image_folder, resumed, "--max-steps", "6", *PERCEPTUAL) == 0
    assert train(image_folder, resumed, "--max-steps", "9", "--resume", *PERCEPTUAL) == 0
    a, _ = load_training_checkpoint(straight / "checkpoints" / "step-00000009")
    b, _ = load_training_checkpoint(resumed / "checkpoints" / "step-00000009")
    assert_same_files(a, b, "step 9")
    anchors = a["disc"]["lecam_anchors"]
    assert anchors.shape == (2,) and anchors.abs().sum() > 0  # updated by the discriminator's steps
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    ramps = {r["step"]: r["train/disc_ramp"] for r in rows if "train/disc_ramp" in r}
    # ramp = (step - disc_start + 1) / 4 at 0-based loop steps 2, 3, 4, 5...; the row logged at step 6 averages loop steps 3-5
    assert ramps[6] == pytest.approx((0.5 + 0.75 + 1.0) / 3) and ramps[9] == 1.0
    assert all(r["train/d_loss"] > 0 for r in rows if "train/d_loss" in r)
