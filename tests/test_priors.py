"""Priors over the VQ codes (``vqldm train-prior --kind masked|autoregressive``): training from the CLI, the
exported prior folder, bit-exact resume, reproducible sampling and ``vqldm generate``, one-line refusals,
inpainting with the masked prior, the sampling functions themselves, and ``vqldm evaluate generation``.

Each kind is trained once (8 steps on 256 Fashion-MNIST images, on the session's tiny autoencoder) and its
exported folder is reused by every test of this module."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from PIL import Image

from vqldm.cli.main import main
from vqldm.priors.config import PriorSamplingConfig
from vqldm.plumbing.checkpoint import latest_checkpoint, load_training_checkpoint, weights_sha256
from vqldm.priors.model import CodePrior
from vqldm.priors.sampling import filter_logits, mask_ratio, masked_training_batch, sample_autoregressive, sample_masked

KINDS = ["masked", "autoregressive"]
STEPS = 8
FAST = ["--set", "data.max_images=256", "--set", "cache.holdout_max_images=32", "--set", "train.progress=false",
        "--set", "train.image_every=1000", "--set", "train.checkpoint_every=4", "--set", "train.num_sample_images=2"]


def train_argv(kind: str, ae_run, out, *extra) -> list[str]:
    return ["train-prior", "--kind", kind, "--config", "tiny", "--autoencoder", str(ae_run), "--data", "fashion-mnist",
            "--out", str(out), *FAST, *[str(e) for e in extra]]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vqldm: error:"), err
    return err


@pytest.fixture(scope="module")
def prior_runs(tiny_ae_run, tmp_path_factory):
    """{kind: run folder} of each kind trained for STEPS steps from the CLI (exit codes checked in test 1)."""
    root = tmp_path_factory.mktemp("priors")
    runs, codes = {}, {}
    for kind in KINDS:
        runs[kind] = root / kind
        codes[kind] = main(train_argv(kind, tiny_ae_run, runs[kind], "--max-steps", STEPS))
    return runs, codes


@pytest.fixture(scope="module")
def uncond_prior(tiny_ae_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("uncond") / "run"
    assert main(train_argv("masked", tiny_ae_run, out, "--max-steps", 2, "--set", "model.class_conditional=false")) == 0
    return out / "prior"


@pytest.fixture
def pipes(prior_runs):
    from vqldm.pipelines.prior_pipeline import load_prior_pipeline

    runs, _ = prior_runs
    return {kind: load_prior_pipeline(runs[kind] / "prior") for kind in KINDS}


# ----------------------------------------------------------------------------- 1. training + export
@pytest.mark.parametrize("kind", KINDS)
def test_train_prior_cli_exports_a_prior_folder(kind, prior_runs, tiny_ae_run):
    from diffusers import VQModel

    from vqldm.pipelines.prior_pipeline import CodePriorPipeline
    from vqldm.pipelines.sampler import load_sampler

    runs, codes = prior_runs
    assert codes[kind] == 0
    run = runs[kind]
    folder = run / "prior"
    assert any((folder / "prior").glob("*.safetensors")) and (folder / "prior" / "config.json").is_file()
    assert any((folder / "vqvae").glob("*.safetensors")) and (folder / "vqvae" / "config.json").is_file()
    assert isinstance(load_sampler(folder), CodePriorPipeline) and isinstance(load_sampler(run), CodePriorPipeline)

    info = json.loads((folder / "vqldm.json").read_text())
    assert info["model_type"] == "code-prior"
    assert info["kind"] == kind
    assert info["grid"] == [8, 8] and info["codebook_size"] == 32
    assert info["num_classes"] == 10 and len(info["class_names"]) == 10
    assert info["default_steps"] == (4 if kind == "masked" else 64)  # tiny.yaml: sampling.steps 4; 8 x 8 codes
    ae_vqvae = VQModel.from_pretrained(tiny_ae_run / "vqvae", use_safetensors=True)
    assert info["vqvae_weights_sha256"] == weights_sha256(ae_vqvae)
    exported = VQModel.from_pretrained(folder / "vqvae", use_safetensors=True)
    assert weights_sha256(exported) == info["vqvae_weights_sha256"]
    prior_cfg = json.loads((folder / "prior" / "config.json").read_text())
    assert prior_cfg["causal"] is (kind == "autoregressive")
    assert prior_cfg["num_classes"] == 10 and prior_cfg["codebook_size"] == 32

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["kind"] == kind and metrics["step"] == STEPS and metrics["grid"] == [8, 8]
    assert math.isfinite(metrics["final_loss"])
    assert latest_checkpoint(run).name == f"step-{STEPS:08d}"


# ----------------------------------------------------------------------------- 2. bit-exact resume
@pytest.mark.parametrize("kind", [pytest.param("masked", marks=pytest.mark.slow), "autoregressive"])  # ~7 s each
def test_resumed_prior_run_is_bit_exact(kind, prior_runs, tiny_ae_run, tmp_path):
    runs, _ = prior_runs
    resumed = tmp_path / "resumed"
    assert main(train_argv(kind, tiny_ae_run, resumed, "--max-steps", 4)) == 0
    assert latest_checkpoint(resumed).name == "step-00000004"
    assert main(train_argv(kind, tiny_ae_run, resumed, "--resume", "--max-steps", STEPS)) == 0
    a_path, b_path = latest_checkpoint(runs[kind]), latest_checkpoint(resumed)
    assert a_path.name == b_path.name == f"step-{STEPS:08d}"
    a, state_a = load_training_checkpoint(a_path)
    b, state_b = load_training_checkpoint(b_path)
    assert {"prior", "optimizer", "ema"} <= set(a) and set(a) == set(b)
    for name in a:
        assert set(a[name]) == set(b[name]), name
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{kind}: {name}/{key} differs after the resume"
    assert state_a["step"] == state_b["step"] == STEPS
    assert state_a["ema_updates"] == state_b["ema_updates"]
    # the exported EMA weights are the same too
    pa = CodePrior.from_pretrained(runs[kind] / "prior" / "prior", use_safetensors=True).state_dict()
    pb = CodePrior.from_pretrained(resumed / "prior" / "prior", use_safetensors=True).state_dict()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


# ----------------------------------------------------------------------------- 3. reproducible sampling, generate
@pytest.mark.parametrize("kind", KINDS)
def test_sampling_is_reproducible(kind, pipes):
    pipe = pipes[kind]
    pipe.set_progress_bar_config(disable=True)

    def sample(seed):
        return pipe(batch_size=3, class_labels=[0, 3, 7], generator=torch.Generator().manual_seed(seed), output_type="pt").images

    a, b, c = sample(0), sample(0), sample(1)
    assert a.shape == (3, 1, 16, 16) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    codes = pipe(batch_size=3, class_labels=3, generator=torch.Generator().manual_seed(0), output_type="codes").images
    assert codes.shape == (3, 8, 8) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 32
    # the codes returned beside the images are the ones they were decoded from
    out = pipe(batch_size=3, class_labels=[0, 3, 7], generator=torch.Generator().manual_seed(0), output_type="pt")
    assert torch.equal(out.images, a)
    from vqldm.autoencoder.model import decode_codes

    redecoded = (decode_codes(pipe.vqvae, out.codes.reshape(3, -1), (8, 8)).float() / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(redecoded, a, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_generate_cli_writes_png_and_takes_class_names(kind, prior_runs, tmp_path, capsys, monkeypatch):
    from vqldm.pipelines.prior_pipeline import CodePriorPipeline

    seen = []
    real_call = CodePriorPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.append(list(kwargs.get("class_labels") or []))
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(CodePriorPipeline, "__call__", spy)
    runs, _ = prior_runs
    model = str(runs[kind] / "prior")
    by_index, by_name = tmp_path / "x.png", tmp_path / "y.png"
    base = ["generate", "--model", model, "--num-images", "4", "--no-progress", "--device", "cpu"]
    assert main([*base, "--class", "3", "--out", str(by_index)]) == 0
    with Image.open(by_index) as img:
        assert img.size[0] > 16 and img.size[1] > 16  # a grid of the 4 images
    assert main([*base, "--class", "Sneaker", "--out", str(by_name)]) == 0
    assert main([*base, "--class", "7", "--out", str(tmp_path / "z.png")]) == 0
    assert seen == [[3] * 4, [7] * 4, [7] * 4]
    # the name resolves to its index: same seed, same class -> the same picture
    assert by_name.read_bytes() == (tmp_path / "z.png").read_bytes()
    capsys.readouterr()
    assert main([*base, "--class", "boots", "--out", str(tmp_path / "w.png")]) == 2
    assert "sneaker" in one_line_error(capsys)
    assert not (tmp_path / "w.png").exists()


# ----------------------------------------------------------------------------- 4. refusals
@pytest.fixture
def prior_copy(prior_runs, tmp_path):
    runs, _ = prior_runs
    folder = tmp_path / "prior"
    shutil.copytree(runs["masked"] / "prior", folder)
    return folder


def _generate(folder, tmp_path, *extra) -> int:
    return main(["generate", "--model", str(folder), "--num-images", "2", "--no-progress", "--device", "cpu",
                 "--out", str(tmp_path / "refused.png"), *[str(e) for e in extra]])


def test_prior_refuses_a_swapped_vqvae(prior_copy, tmp_path, capsys):
    from diffusers import VQModel

    original = VQModel.from_pretrained(prior_copy / "vqvae", use_safetensors=True)
    other = VQModel.from_pretrained(prior_copy / "vqvae", use_safetensors=True)
    with torch.no_grad():
        other.quantize.embedding.weight.add_(0.01)  # same shapes and config, other codebook
    shutil.rmtree(prior_copy / "vqvae")
    other.save_pretrained(prior_copy / "vqvae", safe_serialization=True)
    capsys.readouterr()
    assert _generate(prior_copy, tmp_path) == 2
    err = one_line_error(capsys)
    assert weights_sha256(original)[:16] in err and weights_sha256(other)[:16] in err
    assert not (tmp_path / "refused.png").exists()


def test_out_of_range_class_is_refused(prior_copy, tmp_path, capsys):
    capsys.readouterr()
    assert _generate(prior_copy, tmp_path, "--class", "12") == 2
    err = one_line_error(capsys)
    assert "12" in err and "0..9" in err
    assert not (tmp_path / "refused.png").exists()


def test_unknown_kind_is_refused(tiny_ae_run, tmp_path, capsys):
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["train-prior", "--kind", "diffusion", "--config", "tiny", "--autoencoder", str(tiny_ae_run),
                 "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "'diffusion'" in err and "masked" in err and "autoregressive" in err
    assert not out.exists()


def test_guidance_on_an_unconditional_prior_is_refused(uncond_prior, tmp_path, capsys):
    info = json.loads((uncond_prior / "vqldm.json").read_text())
    assert info["num_classes"] == 0 and info["default_guidance"] == 1.0
    assert _generate(uncond_prior, tmp_path, "--out", str(tmp_path / "ok.png")) == 0  # it does sample
    capsys.readouterr()
    assert _generate(uncond_prior, tmp_path, "--guidance", "2") == 2
    err = one_line_error(capsys)
    assert "guidance" in err and "unconditional" in err
    assert not (tmp_path / "refused.png").exists()
    capsys.readouterr()
    assert _generate(uncond_prior, tmp_path, "--class", "3") == 2
    one_line_error(capsys)


def test_scheduler_on_a_prior_is_refused(prior_copy, tmp_path, capsys):
    capsys.readouterr()
    assert _generate(prior_copy, tmp_path, "--scheduler", "ddim") == 2
    assert "--scheduler" in one_line_error(capsys)
    assert not (tmp_path / "refused.png").exists()


def test_unknown_kind_in_vqldm_json_is_refused(prior_copy, tmp_path, capsys):
    from vqldm.pipelines.prior_pipeline import CodePriorPipeline
    from vqldm.pipelines.sampler import ModelFolderError

    path = prior_copy / "vqldm.json"
    info = json.loads(path.read_text())
    info["kind"] = "foo"
    path.write_text(json.dumps(info))
    with pytest.raises(ModelFolderError, match="'foo'"):
        CodePriorPipeline.from_pretrained(prior_copy)
    capsys.readouterr()
    assert _generate(prior_copy, tmp_path) == 2
    assert "'foo'" in one_line_error(capsys)
    assert not (tmp_path / "refused.png").exists()


def test_kind_in_vqldm_json_must_match_the_weights(prior_copy, tmp_path, capsys):
    path = prior_copy / "vqldm.json"
    info = json.loads(path.read_text())
    info["kind"] = "autoregressive"  # the weights are the masked prior's
    path.write_text(json.dumps(info))
    capsys.readouterr()
    assert _generate(prior_copy, tmp_path) == 2
    one_line_error(capsys)


def test_prior_python_api_errors_name_parameters(pipes):
    """No keyword sink: the diffusion pipeline's arguments that mean nothing for codes are TypeErrors, and
    every refusal names the parameter, never a flag."""
    from vqldm.pipelines.sampler import ImageSampler

    masked, ar = pipes["masked"], pipes["autoregressive"]
    for pipe in (masked, ar):
        pipe.set_progress_bar_config(disable=True)
        assert isinstance(pipe, ImageSampler)
        assert pipe.image_shape == (1, 16, 16) and pipe.max_inference_steps == 64 and pipe.sampler_name == f"{pipe.kind} prior"
        assert pipe.default_guidance == pipe.info["default_guidance"]
        for name, value in (("eta", 0.0), ("quantize", True), ("strength", 0.5), ("decode_batch_size", 2), ("tempreature", 1.0)):
            with pytest.raises(TypeError, match=name):
                pipe(batch_size=1, output_type="codes", **{name: value})
    assert masked.resolve_steps(None) == 4 and masked.resolve_steps(64) == 64 and ar.resolve_steps(3) == 64
    cases = [
        (lambda: masked(num_inference_steps=65), "num_inference_steps must be in 1..64"),
        (lambda: masked(num_inference_steps=0), "num_inference_steps must be in 1..64"),
        (lambda: masked(guidance_scale=2.0), "guidance_scale=2 needs class_labels"),
        (lambda: masked(class_labels=10), "out of range"),
        (lambda: masked(class_labels=1, temperature=0.0), "temperature must be > 0"),
        (lambda: masked(class_labels=1, top_p=2.0), "top_p must be in (0, 1]"),
        (lambda: masked(output_type="latent"), "output_type must be one of"),
        (lambda: masked(image=torch.zeros(1, 1, 16, 16)), "pass image and mask_image together"),
        (lambda: masked.set_scheduler("ddim"), "has no 'ddim' scheduler"),
        (lambda: masked.class_index("hat"), "unknown class 'hat'"),
    ]
    for call, fragment in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert fragment in str(info.value) and "--" not in str(info.value), str(info.value)


@pytest.mark.parametrize("kind, argv, fragment", [
    ("masked", ["--steps", "65"], "--steps 65 is more than the 64 codes"),
    ("autoregressive", ["--steps", "3"], "--steps does not apply"),
    ("masked", ["--eta", "0.5"], "--eta is for latent diffusion pipelines"),
    ("masked", ["--decode-batch-size", "1"], "--decode-batch-size is for latent diffusion pipelines"),
])
def test_generate_refuses_what_a_prior_cannot_take(kind, argv, fragment, prior_runs, tmp_path, capsys):
    runs, _ = prior_runs
    capsys.readouterr()
    assert _generate(runs[kind] / "prior", tmp_path, *argv) == 2
    assert fragment in one_line_error(capsys)
    assert not (tmp_path / "refused.png").exists()


# ----------------------------------------------------------------------------- 5. inpainting
def _init_image() -> torch.Tensor:
    x = torch.full((1, 1, 16, 16), -1.0)
    x[:, :, 3:13, 4:12] = 0.8  # a bright block on black, in [-1, 1]
    return x


def test_masked_prior_inpaints_the_white_part_only(pipes):
    from vqldm.autoencoder.model import encode_indices

    pipe = pipes["masked"]
    pipe.set_progress_bar_config(disable=True)
    x = _init_image()
    mask = torch.zeros(1, 1, 16, 16)
    mask[:, :, 8:] = 1  # white = regenerate: the bottom half
    with torch.no_grad():
        _, init_codes = encode_indices(pipe.vqvae, pipe.vqvae.encode(x).latents)  # 1 x 8 x 8
    out = pipe(batch_size=4, class_labels=[0, 1, 2, 3], image=x, mask_image=mask, output_type="codes",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (4, 8, 8)
    top = init_codes[:, :4].expand(4, -1, -1)
    assert torch.equal(out[:, :4], top)  # kept codes are the init image's
    assert bool((out[:, 4:] != init_codes[:, 4:]).any())  # and the prior did regenerate the rest
    assert int(out.min()) >= 0 and int(out.max()) < 32  # no mask id left
    images = pipe(batch_size=2, class_labels=3, image=x, mask_image=mask, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 1, 16, 16)


def test_autoregressive_prior_refuses_inpainting(pipes, prior_runs, tmp_path, capsys):
    pipe = pipes["autoregressive"]
    x = _init_image()
    mask = torch.zeros(1, 1, 16, 16)
    mask[:, :, 8:] = 1
    with pytest.raises(ValueError) as info:
        pipe(batch_size=1, image=x, mask_image=mask, output_type="codes")
    assert "\n" not in str(info.value) and "masked prior" in str(info.value)

    runs, _ = prior_runs
    Image.fromarray(((x[0, 0] + 1) * 127.5).round().byte().numpy()).save(tmp_path / "init.png")
    Image.fromarray((mask[0, 0] * 255).byte().numpy()).save(tmp_path / "mask.png")
    capsys.readouterr()
    code = main(["generate", "--model", str(runs["autoregressive"] / "prior"), "--init-image", str(tmp_path / "init.png"),
                 "--mask", str(tmp_path / "mask.png"), "--num-images", "1", "--out", str(tmp_path / "o.png"), "--no-progress"])
    assert code == 2
    assert "masked prior" in one_line_error(capsys)
    assert not (tmp_path / "o.png").exists()


# ----------------------------------------------------------------------------- 6. sampling functions
def test_filter_logits_top_k_keeps_exactly_k():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, 20, generator=g)
    for k in (1, 3, 19):
        out = filter_logits(logits, top_k=k)
        assert (torch.isfinite(out).sum(-1) == k).all()
        kept = torch.isfinite(out)
        top = torch.zeros_like(kept).scatter(-1, logits.topk(k, dim=-1).indices, True)
        assert torch.equal(kept, top)
        assert torch.equal(out[kept], logits[kept])  # kept logits are unchanged
    assert torch.equal(filter_logits(logits, top_k=20), logits)  # k >= K: nothing to drop


def test_filter_logits_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])  # sorted: 0.5, 0.3, 0.15, 0.05 at indices 1, 3, 2, 0
    logits = probs.log()[None].repeat(2, 1)
    logits[1] = logits[1].flip(0)  # a second row in another order
    expected = {0.4: [1], 0.75: [1, 3], 0.9: [1, 3, 2], 0.99: [0, 1, 2, 3]}
    for p, keep in expected.items():
        out = filter_logits(logits, top_p=p)
        kept0 = torch.isfinite(out[0]).nonzero().flatten().tolist()
        kept1 = torch.isfinite(out[1].flip(0)).nonzero().flatten().tolist()
        assert kept0 == sorted(keep) and kept1 == sorted(keep), p
        assert torch.allclose(out[0][torch.isfinite(out[0])], logits[0][torch.isfinite(out[0])])
    assert torch.equal(filter_logits(logits, top_p=1.0), logits)
    both = filter_logits(logits, top_k=1, top_p=0.99)  # top-k first, then top-p of what is left
    assert (torch.isfinite(both).sum(-1) == 1).all()


def tiny_prior(causal: bool, seed: int = 0, num_classes: int = 3, grid=(3, 4), codebook: int = 11) -> CodePrior:
    torch.manual_seed(seed)
    return CodePrior(codebook_size=codebook, grid_height=grid[0], grid_width=grid[1], num_classes=num_classes,
                     causal=causal, width=16, layers=2, heads=2).eval()


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_sample_masked_with_one_step_leaves_no_mask(guidance):
    model = tiny_prior(False)
    labels = torch.tensor([0, 1, 2, 1])
    codes = sample_masked(model, 4, labels, PriorSamplingConfig(steps=1, guidance=guidance), generator=torch.Generator().manual_seed(0))
    assert codes.shape == (4, 12)
    assert not (codes == model.mask_id).any()
    assert int(codes.min()) >= 0 and int(codes.max()) < 11


class _AlwaysZero(torch.nn.Module):
    """A 'model' that puts all its mass on code 0 wherever it is asked."""

    def __init__(self, t: int, k: int):
        super().__init__()
        self.position = torch.nn.Parameter(torch.zeros(1))
        self.seq_len, self.mask_id, self.null_class, self.k = t, k, 3, k

    def forward(self, codes, labels=None):
        logits = torch.full((*codes.shape, self.k), -1e4)
        logits[..., 0] = 1e4
        return logits


@pytest.mark.parametrize("which", ["random-prior", "always-zero"])
def test_sample_masked_keeps_known_codes(which):
    model = tiny_prior(False) if which == "random-prior" else _AlwaysZero(12, 11)
    g = torch.Generator().manual_seed(1)
    known = torch.randint(1, 11, (3, 12), generator=g)  # never 0
    known[:, ::3] = -1  # these are generated
    known[2] = -1  # a row with nothing known
    for steps in (1, 4):
        codes = sample_masked(model, 3, torch.tensor([0, 1, 2]), PriorSamplingConfig(steps=steps, guidance=2.0), known=known,
                              generator=torch.Generator().manual_seed(steps))
        fixed = known >= 0
        assert torch.equal(codes[fixed], known[fixed])
        assert not (codes == 11).any()
        if which == "always-zero":
            assert (codes[~fixed] == 0).all()


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_masked_training_batch_follows_the_schedule(schedule):
    b, t, mask_id = 4000, 64, 32
    codes = torch.randint(0, 32, (b, t), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(5)
    u = torch.rand(b, generator=torch.Generator().manual_seed(5), dtype=torch.float64)  # the draws it makes first
    inputs, mask = masked_training_batch(codes, mask_id, g, schedule)
    count = mask.sum(dim=1)
    assert (count >= 1).all()
    expected = torch.ceil(mask_ratio(u, schedule) * t).clamp(min=1).long()
    assert torch.equal(count, expected)
    assert (count[u < 0.02] >= t - 1).all() and (count[u < 0.02] == t).any()  # u near 0: (nearly) all masked
    assert (count[u > 0.98] <= 3).all()  # u near 1: few masked
    assert torch.equal(inputs[mask], torch.full_like(inputs[mask], mask_id))
    assert torch.equal(inputs[~mask], codes[~mask])
    # one code: at least it, whatever u
    _, mask1 = masked_training_batch(codes[:, :1], mask_id, torch.Generator().manual_seed(0), schedule)
    assert mask1.all()


@pytest.mark.parametrize("num_classes", [3, 0])
def test_kv_cached_decoding_matches_the_causal_forward(num_classes):
    model = tiny_prior(True, seed=2, num_classes=num_classes)
    b, t = 3, model.seq_len
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 11, (b, t), generator=g)
    labels = torch.tensor([0, 2, 1]) if num_classes else None
    with torch.no_grad():
        full = model(codes[:, :-1], labels)  # B x T x K: row i predicts code i
        assert full.shape == (b, t, 11)
        caches = [[] for _ in model.blocks]
        token = model.class_tokens(labels, b, codes.device)
        for i in range(t):
            step = model.step(token, i, caches)
            torch.testing.assert_close(step, full[:, i], atol=1e-5, rtol=0)
            token = codes[:, i]
    # and the causal forward really is causal: changing a later code leaves earlier logits unchanged
    changed = codes.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 11
    with torch.no_grad():
        again = model(changed[:, :-1], labels)
    torch.testing.assert_close(again[:, :7], full[:, :7], atol=1e-6, rtol=0)
    assert not torch.allclose(again[:, 7:], full[:, 7:])


def test_greedy_autoregressive_sampling_equals_greedy_full_decoding():
    """top_k=1 makes the sampler greedy: its KV-cached, guided loop must pick what the full causal forward
    pass with the same guidance picks, code after code."""
    model = tiny_prior(True, seed=3)
    labels, guidance = torch.tensor([0, 1, 2]), 3.0
    codes = sample_autoregressive(model, 3, labels, PriorSamplingConfig(guidance=guidance, top_k=1), generator=torch.Generator().manual_seed(0))
    assert codes.shape == (3, model.seq_len)
    null = torch.full_like(labels, model.null_class)
    with torch.no_grad():
        for i in range(model.seq_len):
            prefix = codes[:, :i]
            cond, uncond = model(prefix, labels)[:, i], model(prefix, null)[:, i]
            assert torch.equal(codes[:, i], (uncond + guidance * (cond - uncond)).argmax(-1)), i


# ----------------------------------------------------------------------------- 7. evaluate generation
def test_evaluate_generation_on_a_masked_prior(prior_runs, tmp_path, capsys):
    runs, _ = prior_runs
    out = tmp_path / "eval"
    capsys.readouterr()
    code = main(["evaluate", "generation", "--model", str(runs["masked"] / "prior"), "--num-samples", "40",
                 "--batch-size", "20", "--kid-subsets", "5", "--kid-subset-size", "20", "--out", str(out),
                 "--no-progress", "--data", "fashion-mnist", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    usage = report["prior_code_usage"]
    assert 1 <= usage["codes_emitted"] <= 32 and usage["codebook_size"] == 32 and usage["samples"] == 40
    assert isinstance(report["calibration"], list) and report["calibration"]
    assert report["scheduler"] == "masked prior" and report["steps"] == 4
    assert math.isfinite(report["fid"])
    assert "codes emitted by the prior" in printed


@pytest.mark.slow  # evaluates at several step counts, ~4 s; the fast lane evaluates a prior once (above)
def test_evaluate_steps_sweep_on_a_prior(prior_runs, tmp_path):
    runs, _ = prior_runs
    out = tmp_path / "sweep"
    code = main(["evaluate", "generation", "--model", str(runs["masked"] / "prior"), "--num-samples", "20",
                 "--batch-size", "20", "--kid-subsets", "2", "--kid-subset-size", "10", "--out", str(out), "--no-progress",
                 "--device", "cpu", "--steps-sweep", "2", "--sweep-samples", "20"])
    assert code == 0
    rows = json.loads((out / "report.json").read_text())["steps_sweep"]
    assert [(r["scheduler"], r["steps"]) for r in rows] == [("masked", 2)]
