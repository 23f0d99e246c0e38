"""The model shipped inside the package: loads with no arguments, and guidance gives the asked class."""

from __future__ import annotations

import json

import torch

from vqldm.cli.main import main
from vqldm.evaluation.features import load_feature_extractor
from vqldm.pipelines.pipeline import DEFAULT_MODEL_DIR, load_pipeline


def test_shipped_model_defaults_and_files():
    info = json.loads((DEFAULT_MODEL_DIR / "vqldm.json").read_text())
    assert info["num_classes"] == 10 and info["class_names"][7] == "sneaker"
    # weights are safetensors only, and small enough to ship
    weights = list(DEFAULT_MODEL_DIR.rglob("*.safetensors"))
    assert weights and not list(DEFAULT_MODEL_DIR.rglob("*.bin"))
    assert sum(w.stat().st_size for w in weights) < 20e6
    pipe = load_pipeline(None)
    # the measured default sampler (docs/results.md): UniPC, 10 steps, trailing timestep spacing
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler" and info["default_steps"] == 10
    assert pipe.scheduler.config.timestep_spacing == "trailing" and pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.vqvae.config.scaling_factor == info["autoencoder_scaling_factor"] != 0.18215


def test_python_call_without_guidance_uses_the_measured_default():
    pipe = load_pipeline(None)
    kw = dict(batch_size=2, class_labels=[7, 7], num_inference_steps=3, output_type="pt")
    default = pipe(generator=torch.Generator().manual_seed(5), **kw).images
    assert pipe.default_guidance == pipe.info["default_guidance"] > 1
    explicit = pipe(generator=torch.Generator().manual_seed(5), guidance_scale=pipe.default_guidance, **kw).images
    plain = pipe(generator=torch.Generator().manual_seed(5), guidance_scale=1.0, **kw).images
    assert torch.equal(default, explicit) and not torch.allclose(default, plain)


def test_class_7_with_guidance_3_gives_sneakers(capsys):
    pipe = load_pipeline(None)
    n = 40
    g = torch.Generator().manual_seed(123)
    images = pipe(batch_size=n, class_labels=torch.full((n,), 7), guidance_scale=3.0, generator=g, output_type="pt").images
    classifier = load_feature_extractor("fashion-mnist-detail")
    predicted = classifier.classify(images * 2 - 1)  # the classifier takes [-1, 1]
    accuracy = float((predicted == 7).float().mean())
    with capsys.disabled():
        print(f"\nshipped model, --class 7 --guidance 3: {accuracy:.1%} of {n} images classified as 'sneaker'")
    assert accuracy >= 0.8


def test_generate_with_no_model_writes_a_grid(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["generate", "--num-images", "4", "--steps", "5", "--out", str(out), "--no-progress"]) == 0
    # no --guidance: the measured default_guidance of vqldm.json, and the output says so
    guidance = json.loads((DEFAULT_MODEL_DIR / "vqldm.json").read_text())["default_guidance"]
    assert guidance > 1 and f"guidance {guidance:g}, the model's default" in capsys.readouterr().out
    from PIL import Image

    with Image.open(out) as img:
        assert img.size[0] > 32 and img.mode == "L"
