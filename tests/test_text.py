"""Text-to-image (issue 20): captions -> a byte-level T5 trained from scratch or a frozen CLIP / T5 encoder ->
a cross-attention UNet; training, resume, export as diffusers' LDMTextToImagePipeline layout, sampling from
vqldm and from plain diffusers, and the one-line errors. Offline: pretrained encoders are tiny random ones
saved to local folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqldm.cli.main import main
from vqldm.plumbing.checkpoint import load_safetensors
from vqldm.plumbing.errors import UserError

transformers = pytest.importorskip("transformers")  # the [test] extra installs it; a bare install has no text models

FAST = ["--set", "train.progress=false", "--set", "train.image_every=1000", "--set", "train.sample_steps=2",
        "--set", "cache.holdout_max_images=8"]
SHAPES, TONES, SIDES = ("square", "disc"), ("bright", "dim"), ("left", "right")


@pytest.fixture(scope="module")
def captioned_folder(tmp_path_factory):
    """32 grayscale 16x16 images, each captioned with its shape, tone and side (metadata.jsonl)."""
    root = tmp_path_factory.mktemp("captioned")
    yy, xx = np.mgrid[:16, :16]
    rng = np.random.default_rng(0)
    lines = []
    for i in range(32):
        shape, tone, side = SHAPES[i % 2], TONES[(i // 2) % 2], SIDES[(i // 4) % 2]
        img = rng.integers(0, 30, (16, 16), dtype=np.uint8)
        cx = 4 if side == "left" else 11
        value = 250 if tone == "bright" else 120
        if shape == "square":
            img[5:11, cx - 3:cx + 3] = value
        else:
            img[(yy - 8) ** 2 + (xx - cx) ** 2 < 10] = value
        name = f"{i:02d}.png"
        Image.fromarray(img).save(root / name)
        lines.append(json.dumps({"file_name": name, "text": f"a {tone} {shape} on the {side}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _tiny_encoder_folder(root, kind: str):
    """A tiny random CLIP text or T5 encoder with ByT5's tokenizer, saved as a pretrained folder."""
    tok = transformers.ByT5Tokenizer()
    torch.manual_seed(0)
    if kind == "clip":
        cfg = transformers.CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, max_position_embeddings=77, pad_token_id=0, eos_token_id=1)
        model = transformers.CLIPTextModel(cfg)
    else:
        cfg = transformers.T5Config(vocab_size=len(tok), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
                                    is_encoder_decoder=False, use_cache=False)
        model = transformers.T5EncoderModel(cfg)
    model.save_pretrained(root)
    tok.save_pretrained(root)
    return root


def _train(ae, data, out, *extra):
    return main(["train-diffusion", "--config", "tiny-text", "--autoencoder", str(ae), "--data", str(data),
                 "--out", str(out), *FAST, *extra])


@pytest.fixture(scope="module")
def text_run(tiny_ae_run, captioned_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("text") / "run"
    assert _train(tiny_ae_run, captioned_folder, out, "--max-steps", "6", "--set", "train.checkpoint_every=3") == 0
    return out


# ----------------------------------------------------------------------------- encoders
def test_scratch_encoder_is_byte_level_and_needs_no_files():
    from vqldm.text.config import TextConfig
    from vqldm.text.encoders import scratch_encoder

    enc = scratch_encoder(TextConfig(encoder="scratch", width=32, layers=1, heads=2, max_length=16))
    ids = enc.tokenize(["ab", ""])
    assert ids.shape == (2, 16) and ids[0, :3].tolist() == [ord("a") + 3, ord("b") + 3, 1]  # bytes + 3, then </s>
    assert torch.equal(ids[1], enc.null_ids()[0])
    assert enc.trained and enc.hidden_size == 32
    assert enc.too_long(["x" * 20, "short"]) == 1


@pytest.mark.parametrize("kind, cls", [("clip", "CLIPTextModel"), ("t5", "T5EncoderModel")])
def test_pretrained_encoder_from_a_local_folder_is_frozen(tmp_path, kind, cls):
    from vqldm.text.encoders import pretrained_encoder

    enc = pretrained_encoder(str(_tiny_encoder_folder(tmp_path / kind, kind)), 77)
    assert type(enc.model).__name__ == cls and not enc.trained and enc.hidden_size == 32
    assert not any(p.requires_grad for p in enc.model.parameters())
    states = enc.model(enc.tokenize(["a red disc"]))[0]
    assert states.shape == (1, 77, 32)


def test_encoder_errors_are_one_line(tmp_path):
    from vqldm.text.encoders import pretrained_encoder

    with pytest.raises(UserError, match="unknown text encoder 'no-such-org/no-such-encoder'.*scratch"):
        pretrained_encoder("no-such-org/no-such-encoder", 77)
    bert = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=32)).save_pretrained(bert)
    with pytest.raises(UserError, match="is a bert model; vqldm takes CLIP text encoders and T5"):
        pretrained_encoder(str(bert), 77)
    clip = _tiny_encoder_folder(tmp_path / "clip", "clip")
    with pytest.raises(UserError, match="text.max_length 100 is more than the 77 positions"):
        pretrained_encoder(str(clip), 100)


# ----------------------------------------------------------------------------- training, export, sampling
def test_text_run_exports_a_diffusers_text_pipeline(text_run):
    pipe_dir = text_run / "pipeline"
    index = json.loads((pipe_dir / "model_index.json").read_text())
    assert index["_class_name"] == "LDMTextToImagePipeline"
    assert index["bert"] == ["transformers", "T5EncoderModel"] and index["tokenizer"] == ["transformers", "ByT5Tokenizer"]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    info = json.loads((pipe_dir / "vqldm.json").read_text())
    assert info["conditioning"] == "text" and info["text_encoder_source"] == "scratch" and info["text_max_length"] == 77
    assert info["default_guidance"] == 2.0  # the training grids' train.sample_guidance
    # the exported encoder is the EMA copy of the one trained with the UNet
    ema = load_safetensors(text_run / "checkpoints" / "step-00000006" / "ema.safetensors")
    bert = load_safetensors(next((pipe_dir / "bert").glob("*.safetensors")))
    shared = [k for k in bert if f"text_encoder.{k}" in ema]
    assert shared and all(torch.equal(bert[k], ema[f"text_encoder.{k}"]) for k in shared)
    first = load_safetensors(text_run / "checkpoints" / "step-00000003" / "ema.safetensors")
    assert any(not torch.equal(first[k], ema[k]) for k in ema if k.startswith("text_encoder."))  # it trained


def test_vqldm_and_plain_diffusers_sample_the_same_images(text_run):
    import diffusers

    from vqldm.pipelines.pipeline import load_pipeline
    from vqldm.pipelines.text_pipeline import VQTextToImagePipeline

    pipe = load_pipeline(text_run / "pipeline", channels_last=False)
    assert isinstance(pipe, VQTextToImagePipeline)
    prompts = ["a bright disc on the left", "a dim square on the right"]
    ours = pipe(prompt=prompts, guidance_scale=3.0, num_inference_steps=4, generator=torch.Generator().manual_seed(1),
                output_type="np").images
    ref = diffusers.DiffusionPipeline.from_pretrained(text_run / "pipeline")
    assert type(ref).__name__ == "LDMTextToImagePipeline"
    ref.set_progress_bar_config(disable=True)
    # that pipeline draws latents of height/8 (it assumes an f8 autoencoder): 8x8 latents = 64 "pixels"
    theirs = ref(prompts, height=64, width=64, guidance_scale=3.0, num_inference_steps=4,
                 generator=torch.Generator().manual_seed(1), output_type="np").images
    assert ours.shape == theirs.shape == (2, 16, 16, 1)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # guidance changes the images; a prompt changes them
    plain = pipe(prompt=prompts, guidance_scale=1.0, num_inference_steps=4, generator=torch.Generator().manual_seed(1),
                 output_type="np").images
    assert np.abs(plain - ours).max() > 1e-4
    with pytest.raises(ValueError, match="takes prompt=..., not class_labels"):
        pipe(class_labels=[0])
    with pytest.raises(ValueError, match="got 2 prompts for batch_size 3"):
        pipe(prompt=prompts, batch_size=3)


def test_text_run_resumes_bit_exactly(tiny_ae_run, captioned_folder, text_run, tmp_path):
    resumed = tmp_path / "resumed"
    common = ["--set", "train.checkpoint_every=3"]
    assert _train(tiny_ae_run, captioned_folder, resumed, "--max-steps", "3", *common) == 0
    assert _train(tiny_ae_run, captioned_folder, resumed, "--max-steps", "6", "--resume", *common) == 0
    for name in ("unet", "ema"):
        a = load_safetensors(text_run / "checkpoints" / "step-00000006" / f"{name}.safetensors")
        b = load_safetensors(resumed / "checkpoints" / "step-00000006" / f"{name}.safetensors")
        assert a.keys() == b.keys() and any(k.startswith("text_encoder.") for k in a)
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_generate_with_prompts_from_the_cli(text_run, tmp_path, capsys):
    model = str(text_run / "pipeline")
    assert main(["generate", "--model", model, "--prompt", "a bright disc on the left", "--num-images", "2",
                 "--steps", "2", "--guidance", "2", "--out", str(tmp_path / "grid.png"), "--no-progress"]) == 0
    assert Image.open(tmp_path / "grid.png").size[0] > 16
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dim square on the left\na bright disc on the right\n", encoding="utf-8")
    assert main(["generate", "--model", model, "--prompt-file", str(prompts), "--steps", "2",
                 "--out", str(tmp_path / "each") + "/", "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "each").glob("*.png")) == ["0000.png", "0001.png"]
    capsys.readouterr()
    # a class on a text model, a prompt file with a hole in it
    assert main(["generate", "--model", model, "--class", "1", "--out", str(tmp_path / "x.png")]) == 2
    assert "text-to-image" in capsys.readouterr().err
    prompts.write_text("one\n\nthree\n", encoding="utf-8")
    assert main(["generate", "--model", model, "--prompt-file", str(prompts), "--out", str(tmp_path / "y.png")]) == 2
    err = capsys.readouterr().err
    assert "line 2 is empty" in err and err.count("\n") == 1


def test_prompt_on_a_class_model_is_one_line(tmp_path, capsys):
    assert main(["generate", "--prompt", "a sneaker", "--out", str(tmp_path / "x.png")]) == 2  # the shipped class model
    err = capsys.readouterr().err
    assert "--prompt needs a text-to-image model" in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_frozen_pretrained_encoder_trains_the_unet_only(tiny_ae_run, captioned_folder, tmp_path):
    import diffusers

    clip = _tiny_encoder_folder(tmp_path / "clip", "clip")
    out = tmp_path / "frozen"
    assert _train(tiny_ae_run, captioned_folder, out, "--max-steps", "2", "--set", f"text.encoder={clip}") == 0
    ckpt = load_safetensors(out / "checkpoints" / "step-00000002" / "unet.safetensors")
    assert ckpt and not any(k.startswith("text_encoder.") for k in ckpt)  # frozen: not trained, not checkpointed
    exported = transformers.CLIPTextModel.from_pretrained(out / "pipeline" / "bert")
    original = transformers.CLIPTextModel.from_pretrained(clip)
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), original.state_dict().values()))
    pipe = diffusers.DiffusionPipeline.from_pretrained(out / "pipeline")
    assert type(pipe.bert).__name__ == "CLIPTextModel"
    pipe.set_progress_bar_config(disable=True)
    images = pipe(["a dim disc on the left"], height=64, width=64, guidance_scale=2.0, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, 16, 16, 1) and np.isfinite(images).all()


def test_text_config_errors_before_any_work(tiny_ae_run, captioned_folder, tmp_path, capsys):
    out = tmp_path / "bad"
    assert _train(tiny_ae_run, captioned_folder, out, "--set", "text.encoder=no-such-org/no-such-encoder") == 2
    err = capsys.readouterr().err
    assert "unknown text encoder" in err and err.count("\n") == 1 and not out.exists()
    assert _train(tiny_ae_run, captioned_folder, out, "--set", "model.class_conditional=true") == 2
    assert "classes or on text" in capsys.readouterr().err and not out.exists()


def test_the_text_step_reads_nothing_back(tiny_ae_run, captioned_folder, tmp_path):
    from test_lean_step import QUIET, host_reads, per_step_reads  # the host-read counter of the lean-step tests

    def argv(steps, name):
        return ["train-diffusion", "--config", "tiny-text", "--autoencoder", str(tiny_ae_run), "--data", str(captioned_folder),
                "--out", str(tmp_path / name), "--max-steps", str(steps), "--set", "train.num_sample_images=2",
                "--set", "train.sample_steps=2", *QUIET]

    host_reads(argv(1, "warm"))  # the folder is indexed (one read) by the first run that sees it
    assert per_step_reads(argv) == 0


def test_only_text_imports_transformers_and_only_when_called():
    """transformers is the [text] extra: a bare install trains and samples class models. Only text/ names it,
    inside functions (a module-level import there would make every text/ import need it)."""
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    wrong = []
    for path in sorted(repo.rglob("*.py")):
        rel = path.relative_to(repo)
        if rel.parts[0] in ("tests", "benchmarks", "scripts") or "site-packages" in rel.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f)}
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] == "transformers" for n in names):
                if rel.parts[0] != "text" or id(node) not in in_function:
                    wrong.append(f"{rel}:{node.lineno}")
    assert not wrong, "transformers imported outside text/ functions: " + ", ".join(wrong)
