"""``vqldm evaluate`` end to end on tiny models: train-features, autoencoder, generation (stub pipeline), errors."""

import json
import types

import numpy as np
import pytest
import torch

from vqldm.cli import evaluate
from vqldm.cli.main import main
from vqldm.evaluation.features import (
    DomainClassifier,
    DomainClassifierConfig,
    load_domain_classifier,
    load_feature_extractor,
    save_domain_classifier,
)
from vqldm.plumbing.errors import UserError


@pytest.fixture(scope="module")
def tiny_features(tmp_path_factory):
    """A domain classifier trained for 3 steps on 256 Fashion-MNIST images at 16x16."""
    out = tmp_path_factory.mktemp("features") / "clf"
    code = main(["evaluate", "train-features", "--data", "fashion-mnist", "--out", str(out), "--max-steps", "3",
                 "--train-images", "256", "--batch-size", "32", "--image-size", "16", "--no-progress"])
    assert code == 0
    return out


def test_train_features_writes_a_loadable_classifier(tiny_features):
    meta = json.loads((tiny_features / "config.json").read_text())
    assert meta["steps"] == 3 and 0.0 <= meta["test_accuracy"] <= 1.0
    assert (tiny_features / "model.safetensors").is_file()
    ext = load_feature_extractor(str(tiny_features), batch_size=7)
    x = torch.rand(10, 1, 32, 32) * 2 - 1  # other sizes are resized to the classifier's
    f = ext(x)
    assert f.shape == (10, ext.dim) and ext.dim == 128 + 2 * 32  # embedding + the first block's detail features
    assert ext.classify(x).shape == (10,) and ext.num_classes == 10


def test_domain_classifier_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = DomainClassifier(DomainClassifierConfig(image_size=16, widths=[8, 16], feature_dim=12, num_classes=3)).eval()
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    save_domain_classifier(model, tmp_path / "clf")
    loaded = load_domain_classifier(tmp_path / "clf")
    with torch.no_grad():
        assert torch.equal(model.features(x), loaded.features(x))
        assert torch.equal(model(x), loaded(x))


def test_evaluate_autoencoder_end_to_end(tiny_ae_run, tiny_features, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["evaluate", "autoencoder", "--model", str(tiny_ae_run), "--data", "fashion-mnist", "--features", str(tiny_features),
                 "--max-images", "64", "--batch-size", "32", "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 64 and report["image_size"] == 16
    for key in ("psnr", "ssim", "rfid"):
        assert isinstance(report[key], float)
    assert report["rfid"] >= 0
    assert 0 < report["codebook"]["codebook_usage"] <= 100
    assert report["codebook"]["codes_used"] + report["codebook"]["dead_codes"] == report["codebook_size"]
    per_class = report["per_class"]
    assert set(per_class["codes_per_class"]) == set(json.loads((tiny_features / "config.json").read_text())["config"]["class_names"])
    assert 0.0 <= per_class["nmi"] <= 1.0
    for name in ("code_frequency.png", "class_code_heatmap.png", "reconstructions.png"):
        assert (out / name).stat().st_size > 0
    printed = capsys.readouterr().out
    assert "rFID" in printed and "64 reconstructions" in printed and "NMI" in printed


class _StubPipeline:
    """Implements the generation API used by ``vqldm evaluate generation``: held-out images plus noise."""

    def __init__(self, images):
        self.images = images
        self.vqvae = types.SimpleNamespace(config=types.SimpleNamespace(sample_size=16, in_channels=1))
        self.info = {}
        self.calls = []
        self.num_classes, self.class_names, self.default_guidance = 10, [str(i) for i in range(10)], 3.0
        self.sampler_name = "DDIMScheduler"

    def resolve_steps(self, steps=None):
        return steps or 50

    def set_progress_bar_config(self, **kwargs):
        pass

    def set_scheduler(self, name):
        self.sampler_name = name

    def __call__(self, batch_size, num_inference_steps, generator, output_type, class_labels=None, guidance_scale=1.0):
        self.calls.append((batch_size, num_inference_steps, None if class_labels is None else class_labels.tolist()))
        idx = torch.randint(0, len(self.images), (batch_size,), generator=generator)
        x = (self.images[idx] + 1) / 2 + 0.05 * torch.randn(batch_size, 1, 16, 16, generator=generator)
        return types.SimpleNamespace(images=x.clamp(0, 1))


def test_evaluate_generation_with_a_stub_pipeline(tiny_features, tmp_path, monkeypatch, capsys):
    from vqldm.data.config import DataConfig
    from vqldm.data.sources import load_datasets

    ds = load_datasets("fashion-mnist", DataConfig(image_size=16, fit="pad"), progress=False)
    stub = _StubPipeline(ds.train.batch(torch.arange(200))[0])
    monkeypatch.setattr(evaluate, "load_sampler", lambda path, device="cpu", freeze_unet=False: stub)
    out = tmp_path / "gen"
    code = main(["evaluate", "generation", "--features", str(tiny_features), "--num-samples", "40", "--batch-size", "20",
                 "--steps", "3", "--guidance", "2", "--steps-sweep", "1,2", "--sweep-schedulers", "ddim,dpm", "--sweep-samples", "20",
                 "--kid-subsets", "5", "--kid-subset-size", "20", "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_generated"] == 40 and report["num_real"] == 40
    assert report["fid"] >= 0 and "kid_mean" in report and 0 <= report["precision"] <= 1
    assert report["num_classes"] == 10 and 0 <= report["class_accuracy"]["class_accuracy"] <= 1
    assert [(r["scheduler"], r["steps"]) for r in report["steps_sweep"]] == [("ddim", 1), ("ddim", 2), ("dpm", 1), ("dpm", 2)]
    timed = [c for c in stub.calls if c[1] == 3]  # the measured run (an untimed 2-step warm-up batch comes first)
    assert len(timed) == 2 and timed[0] == (20, 3, [i % 10 for i in range(20)])  # balanced class labels
    for name in ("real_vs_generated.png", "fid_vs_steps.png"):
        assert (out / name).stat().st_size > 0
    printed = capsys.readouterr().out
    assert "40 generated vs 40 real" in printed


def test_inception_offline_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    code = main(["evaluate", "autoencoder", "--model", str(tmp_path), "--features", "inception", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("vqldm: error:") and "inception" in err.lower()


def test_missing_feature_folder_is_a_user_error(tmp_path, capsys):
    code = main(["evaluate", "generation", "--features", str(tmp_path / "nope"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "train-features" in err and "--features" in err  # the CLI names its flag ...
    with pytest.raises(UserError) as raised:
        load_feature_extractor(str(tmp_path / "nope"))
    assert "--" not in str(raised.value)  # ... the library speaks of what it was given


def test_evaluate_on_a_reference_too_small_for_a_frechet_distance_is_one_line(tiny_ae_run, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "four"
    folder.mkdir()
    for i in range(4):  # a 5% held-out split of 4 images is 1 image
        Image.fromarray(np.full((28, 28), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    capsys.readouterr()
    code = main(["evaluate", "autoencoder", "--model", str(tiny_ae_run), "--data", str(folder), "--out", str(tmp_path / "ev"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "has 1 image; a Fréchet distance needs at least 2" in err
    assert not (tmp_path / "ev").exists()


def test_evaluate_generation_refuses_a_bad_scheduler_option_before_sampling(tiny_features, tmp_path, capsys):
    out = tmp_path / "gen"
    code = main(["evaluate", "generation", "--features", str(tiny_features), "--scheduler-option", "nonsense=1",
                 "--out", str(out), "--no-progress"])  # the shipped model: unipc, its default sampler
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--scheduler-option nonsense=1" in err and "no option 'nonsense'" in err
    assert not out.exists()
