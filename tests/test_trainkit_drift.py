"""The two trainers must not drift apart: the same NaN policy, LR schedule, ``--max-steps`` check and
training clock in ``train-autoencoder`` and ``train-diffusion``; and the vqvae a UNet was trained on
(weights and latent scale) is what a pipeline folder is checked against, a missing scale meaning 1.0."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from vqldm.diffusion.config import ObjectiveConfig, UNetConfig
from vqldm.diffusion.export import export_pipeline_folder
from vqldm.latents.cache import read_index
from vqldm.diffusion.model import build_unet
from vqldm.diffusion.objective import make_sampling_scheduler
from vqldm.cli.main import main
from vqldm.plumbing.checkpoint import latest_checkpoint, load_training_checkpoint, weights_sha256
from vqldm.plumbing.trainkit import TrainLoopConfig, learning_rate

from test_diffusion_cache_model import tiny_vqvae  # the same tiny VQModel as the cache tests

TRAINERS = ["autoencoder", "diffusion"]
# the diffusion case of the longest checks (3-10 s each) is in the slow lane; the autoencoder case stays fast
TRAINERS_SLOW_LDM = ["autoencoder", pytest.param("diffusion", marks=pytest.mark.slow)]

AE_FAST = ["--set", "train.progress=false", "--set", "train.image_every=1000", "--set", "data.holdout_fraction=0.2",
           "--set", "train.eval_max_images=8"]
LDM_FAST = ["--set", "train.progress=false", "--set", "data.max_images=64", "--set", "cache.holdout_max_images=16",
            "--set", "train.image_every=1000", "--set", "train.sample_steps=2", "--set", "train.num_sample_images=2"]

# the loss function as the trainer module looks it up (monkeypatched to inject a NaN)
LOSS_FN = {"autoencoder": ("vqldm.autoencoder.train", "reconstruction_loss"),
           "diffusion": ("vqldm.diffusion.train", "diffusion_loss")}


@pytest.fixture
def run(image_folder, tiny_ae_run):
    """run(trainer, out, *extra) -> exit code of `vqldm train-<trainer>` on the tiny presets."""

    def _run(trainer: str, out, *extra) -> int:
        if trainer == "autoencoder":
            argv = ["train-autoencoder", "--config", "tiny", "--data", str(image_folder), "--out", str(out), *AE_FAST]
        else:
            argv = ["train-diffusion", "--config", "tiny", "--autoencoder", str(tiny_ae_run), "--data", "fashion-mnist",
                    "--out", str(out), *LDM_FAST]
        return main([*argv, *[str(e) for e in extra]])

    return _run


class NaNOnCall:
    """Wraps a loss function: returns NaN on its ``k``-th call (never when ``k`` is None), the real value otherwise."""

    def __init__(self, real, k: int | None):
        self.real, self.k = real, k
        self.calls = 0
        self.injected = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        value = self.real(*args, **kwargs)
        if self.calls == self.k:
            self.injected += 1
            return value * float("nan")
        return value


def patch_loss(monkeypatch, trainer: str, k: int | None) -> NaNOnCall:
    module_name, attr = LOSS_FN[trainer]
    module = __import__(module_name, fromlist=[attr])
    wrapper = NaNOnCall(getattr(module, attr), k)
    monkeypatch.setattr(module, attr, wrapper)
    return wrapper


def read_state(ckpt) -> dict:
    return json.loads((ckpt / "state.json").read_text())


# ----------------------------------------------------------------------------- 1. NaN skip + resume
@pytest.mark.parametrize("trainer", TRAINERS_SLOW_LDM)
def test_resumed_after_nan_skip_equals_uninterrupted(trainer, run, tmp_path, monkeypatch, capsys):
    nan_call, m, n = 3, 5, 8  # NaN loss on the 3rd batch (loop step 2); interrupted at 5; run to 8
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"

    with monkeypatch.context() as mp:
        wrapper = patch_loss(mp, trainer, nan_call)
        assert run(trainer, straight, "--max-steps", n) == 0
        assert wrapper.injected == 1 and wrapper.calls == n
    err = capsys.readouterr().err
    assert err.count("skipping this batch once") == 1 and f"at step {nan_call - 1};" in err

    with monkeypatch.context() as mp:
        wrapper = patch_loss(mp, trainer, nan_call)
        assert run(trainer, resumed, "--max-steps", m) == 0
        assert wrapper.injected == 1 and wrapper.calls == m
    err = capsys.readouterr().err
    assert err.count("skipping this batch once") == 1
    assert latest_checkpoint(resumed).name == f"step-{m:08d}"

    with monkeypatch.context() as mp:
        wrapper = patch_loss(mp, trainer, None)  # the resumed session sees no NaN
        assert run(trainer, resumed, "--max-steps", n, "--resume") == 0
        assert wrapper.injected == 0 and wrapper.calls == n - m  # it continued at step m, not at m - 1
    captured = capsys.readouterr()
    assert "skipping this batch" not in captured.err
    assert f"at step {m}" in captured.out

    a_path, b_path = latest_checkpoint(straight), latest_checkpoint(resumed)
    assert a_path.name == b_path.name == f"step-{n:08d}"
    a, state_a = load_training_checkpoint(a_path)
    b, state_b = load_training_checkpoint(b_path)
    assert state_a["step"] == state_b["step"] == n
    assert set(a) == set(b) and {"optimizer", "rng"} <= set(a)
    for name in a:
        assert set(a[name]) == set(b[name]), name
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{trainer}: {name}/{key} differs after the resume"
    assert state_a["optimizer"] == state_b["optimizer"]  # optimizer step counts: the skipped batch made no step


# ----------------------------------------------------------------------------- 2. LR schedule
LR_SETTINGS = {"lr": 0.001, "warmup_steps": 2, "lr_schedule": "cosine", "grad_accumulation": 2}


def test_lr_is_the_same_function_of_optimizer_steps_in_both_trainers(run, tmp_path):
    steps = 8
    overrides = ["--set", "train.log_every=1"]
    for key, value in LR_SETTINGS.items():
        overrides += ["--set", f"train.{key}={value}"]
    logged = {}
    for trainer in TRAINERS:
        out = tmp_path / trainer
        assert run(trainer, out, "--max-steps", steps, *overrides) == 0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        lr_rows = [(r["step"], r["train/lr"]) for r in rows if "train/lr" in r]
        assert [s for s, _ in lr_rows] == list(range(1, steps + 1)), trainer
        logged[trainer] = [lr for _, lr in lr_rows]

    assert logged["autoencoder"] == logged["diffusion"]
    tc = TrainLoopConfig(max_steps=steps, **LR_SETTINGS)
    # the row of loop step s holds the lr that was set for loop step s - 1
    assert logged["diffusion"] == [learning_rate(tc, s - 1) for s in range(1, steps + 1)]
    # counted in optimizer steps (4 of them): warm-up 0.5, 1.0; cosine 1.0, 0.5 -- each held for 2 loop steps
    assert logged["diffusion"] == pytest.approx([5e-4, 5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 5e-4, 5e-4], rel=1e-12)
    lrs = logged["diffusion"]
    assert all(lrs[i] == lrs[i + 1] for i in range(0, steps, 2))


# ----------------------------------------------------------------------------- 3. --max-steps 0
@pytest.mark.parametrize("value", ["0", "-1"])
@pytest.mark.parametrize("trainer", TRAINERS)
def test_nonpositive_max_steps_is_one_line_and_creates_nothing(trainer, value, run, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    assert run(trainer, out, "--max-steps", value) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vqldm: error:")
    assert "--max-steps must be >= 1" in err and f"got {value}" in err
    assert not out.exists()


# ----------------------------------------------------------------------------- 4. train_seconds across --resume
@pytest.mark.parametrize("trainer", TRAINERS)
def test_train_seconds_keep_growing_across_a_resume(trainer, run, tmp_path):
    out = tmp_path / "run"
    assert run(trainer, out, "--max-steps", 4) == 0
    t1 = read_state(out / "checkpoints" / "step-00000004")["train_seconds"]
    assert t1 > 0
    assert run(trainer, out, "--max-steps", 8, "--resume") == 0
    t2 = read_state(out / "checkpoints" / "step-00000008")["train_seconds"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 8
    total = metrics["train_seconds"]
    assert t2 > t1
    assert total > t1
    # metrics.json takes its reading just before the final checkpoint is written
    assert t2 - 0.5 <= total <= t2 + 1e-9
    if trainer == "diffusion":  # the total is the first session's seconds plus this session's
        assert metrics["steps_this_session"] == 4
        assert total - metrics["session_seconds"] == pytest.approx(t1, abs=0.05)


# ----------------------------------------------------------------------------- 5. swapped vqvae in a pipeline
@pytest.fixture
def pipeline_folder(tmp_path):
    vq = tiny_vqvae(0, 2.5)
    unet = build_unet(UNetConfig(block_out_channels=[16, 32], attention=[False, True], layers_per_block=1,
                                 attention_head_dim=8, norm_num_groups=8, class_conditional=True), (3, 8, 8), num_classes=3)
    folder = export_pipeline_folder(vq, unet, make_sampling_scheduler(ObjectiveConfig(prediction_type="v_prediction")),
                                    tmp_path / "pipe", extra={"class_names": ["a", "b", "c"]})
    return folder, vq


def _refused(folder, tmp_path, capsys) -> str:
    """The one-line ModelFolderError of from_pretrained, after checking `vqldm generate` refuses with one line too."""
    from vqldm.pipelines.pipeline import VQLatentDiffusionPipeline
    from vqldm.pipelines.sampler import ModelFolderError

    with pytest.raises(ModelFolderError) as info:
        VQLatentDiffusionPipeline.from_pretrained(folder)
    message = str(info.value)
    assert "\n" not in message
    capsys.readouterr()
    png = tmp_path / "x.png"
    assert main(["generate", "--model", str(folder), "--out", str(png), "--num-images", "2", "--steps", "2",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vqldm: error:") and message in err
    assert not png.exists()
    return message


def test_pipeline_refuses_a_swapped_same_shaped_vqvae(pipeline_folder, tmp_path, capsys):
    from vqldm.pipelines.pipeline import VQLatentDiffusionPipeline

    folder, vq = pipeline_folder
    pipe = VQLatentDiffusionPipeline.from_pretrained(folder)  # the folder as exported loads
    assert weights_sha256(pipe.vqvae) == weights_sha256(vq)

    other = tiny_vqvae(0, 2.5)
    with torch.no_grad():
        other.decoder.conv_out.bias.add_(0.01)  # same config and shapes, different weights
    shutil.rmtree(folder / "vqvae")
    other.save_pretrained(folder / "vqvae", safe_serialization=True)
    assert json.loads((folder / "vqvae" / "config.json").read_text())["scaling_factor"] == 2.5

    message = _refused(folder, tmp_path, capsys)
    assert weights_sha256(other)[:16] in message and weights_sha256(vq)[:16] in message


def test_pipeline_refuses_a_vqvae_with_another_scaling_factor(pipeline_folder, tmp_path, capsys):
    folder, _ = pipeline_folder
    config_path = folder / "vqvae" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["scaling_factor"] == 2.5
    config["scaling_factor"] = 1.75  # same weights, another latent scale
    config_path.write_text(json.dumps(config))

    message = _refused(folder, tmp_path, capsys)
    assert "1.75" in message and "2.5" in message


# ----------------------------------------------------------------------------- 6. a VQ folder without scaling_factor
def test_vq_folder_without_scaling_factor_trains_at_scale_one(run, tiny_ae_run, tmp_path):
    bare = tmp_path / "bare" / "vqvae"
    shutil.copytree(tiny_ae_run / "vqvae", bare)
    config_path = bare / "config.json"
    config = json.loads(config_path.read_text())
    assert config["scaling_factor"] != 1.0  # the tiny run measured its own scale: dropping it must matter
    del config["scaling_factor"]
    config_path.write_text(json.dumps(config))
    assert not (bare.parent / "config.yaml").exists()

    out = tmp_path / "ldm"
    assert main(["train-diffusion", "--config", "tiny", "--autoencoder", str(bare), "--data", "fashion-mnist",
                 "--out", str(out), "--max-steps", "2", *LDM_FAST]) == 0

    exported = json.loads((out / "pipeline" / "vqvae" / "config.json").read_text())
    assert exported["scaling_factor"] == 1.0
    info = json.loads((out / "pipeline" / "vqldm.json").read_text())
    assert info["autoencoder_scaling_factor"] == 1.0

    metrics = json.loads((out / "metrics.json").read_text())
    cache_folder = metrics["latent_cache"]["folder"]
    assert metrics["latent_cache"]["built"]
    index = read_index(cache_folder)
    assert index is not None and index["scaling_factor"] == 1.0
    # no run folder beside the bare vqvae: the cache lives in the diffusion run, and only there
    indexes = [read_index(p.parent) for p in (out / "latent_cache").glob("*/index.json")]
    assert [i["scaling_factor"] for i in indexes] == [1.0]
    assert not (bare.parent / "latent_cache").exists() and not (bare / "latent_cache").exists()


# ----------------------------------------------------------------------------- 7. accumulation windows
@pytest.mark.parametrize("trainer", TRAINERS_SLOW_LDM)
def test_resume_under_gradient_accumulation_is_bit_exact(trainer, run, tmp_path, capsys):
    """Checkpoints sit on optimizer-step boundaries, so a resumed run with grad_accumulation 2 equals an
    uninterrupted one; a --max-steps that would end mid-window is refused before anything is written."""
    acc = ("--set", "train.grad_accumulation=2", "--set", "train.checkpoint_every=2")
    assert run(trainer, tmp_path / "odd", "--max-steps", 5, *acc) == 2
    assert "not a multiple of train.grad_accumulation" in capsys.readouterr().err
    assert not (tmp_path / "odd").exists()
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run(trainer, straight, "--max-steps", 8, *acc) == 0
    assert run(trainer, resumed, "--max-steps", 4, *acc) == 0
    assert run(trainer, resumed, "--max-steps", 8, "--resume", *acc) == 0
    a, _ = load_training_checkpoint(latest_checkpoint(straight))
    b, _ = load_training_checkpoint(latest_checkpoint(resumed))
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{trainer}: {name}/{key} differs after the resume"


# ----------------------------------------------------------------------------- 8. time budget
@pytest.mark.parametrize("trainer", TRAINERS_SLOW_LDM)
def test_max_seconds_stops_the_run_and_still_exports(trainer, run, tmp_path):
    out = tmp_path / "timed"
    assert run(trainer, out, "--max-steps", 20, "--set", "train.max_seconds=0.001") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 1 <= metrics["step"] < 20  # stopped by the clock, not by max_steps
    assert latest_checkpoint(out).name == f"step-{metrics['step']:08d}"
    assert (out / ("vqvae" if trainer == "autoencoder" else "pipeline")).is_dir()
