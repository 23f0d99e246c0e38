"""The quantizer kinds (``quantizer.kind``: vq, simvq, fsq) and the rotation trick (``quantizer.gradient``).

* rotation trick: forward value bit-for-bit the straight-through value, gradient sg[lambda R] with R e^ = q^;
* simvq: the VQModel's codebook holds E = C W (after every forward and every sync), only W learns, the loss
  is beta ||z - sg e||^2 + ||sg z - e||^2;
* fsq: levels validated or derived, the grid in mixed-radix order, per-channel rounding = the Euclidean
  nearest grid row (what a plain VQModel picks), straight-through gradient, the box penalty;
* every kind: ``decode(quantize(h)) == decode(lookup(indices)) == VQModel.decode(h)``; the blocked nearest-code
  search equals diffusers' one cdist and fits K = 2^16;
* every kind from the CLI (slow): trains, resumes bit-exactly, exports a plain VQModel that decodes
  identically, and stage 2 (diffusion, both priors, generate) runs on it.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqldm.autoencoder.fsq import FSQ, fsq_grid, fsq_levels
from vqldm.autoencoder.model import AutoencoderModelConfig, VQAutoencoder, build_vqmodel, nearest_codes, vq_decode
from vqldm.autoencoder.quantizer import QuantizerConfig, VectorQuantizerEMA, straight_through
from vqldm.autoencoder.rotation import rotation_trick
from vqldm.autoencoder.simvq import SimVQ
from vqldm.plumbing.errors import UserError

D = 3


def latents(seed: int = 0, b: int = 4, hw: int = 6, d: int = D, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, hw, hw, generator=g) * scale


def flat_rows(h: torch.Tensor) -> torch.Tensor:
    return h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])


# ----------------------------------------------------------------------------- rotation trick
def test_rotation_trick_value_is_straight_through_and_gradient_is_lambda_r():
    h = latents(0).requires_grad_(True)
    q = latents(1)
    out = rotation_trick(h, q)
    assert torch.equal(out.detach(), straight_through(h, q).detach())  # bit for bit
    g = latents(2)
    (out * g).sum().backward()
    # explicit R = I - 2 r r^T + 2 q^ e^T per vector (paper, eq. 4): R e^ = q^, and d out / d h = lambda R
    for e, qq, grad, gg in zip(flat_rows(h.detach()), flat_rows(q), flat_rows(h.grad), flat_rows(g)):
        eh, qh = e / e.norm(), qq / qq.norm()
        r = (eh + qh) / (eh + qh).norm()
        rot = torch.eye(D) - 2 * torch.outer(r, r) + 2 * torch.outer(qh, eh)
        torch.testing.assert_close(rot @ eh, qh, atol=1e-5, rtol=0)
        torch.testing.assert_close((qq.norm() / e.norm()) * rot @ e, qq, atol=1e-5, rtol=0)
        torch.testing.assert_close(grad, (qq.norm() / e.norm()) * rot.T @ gg, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("update,lookup", [("ema", "euclidean"), ("gradient", "euclidean"), ("ema", "cosine")])
def test_vq_with_rotation_outputs_the_ste_value_and_a_different_gradient(update, lookup):
    outs = {}
    for gradient in ("ste", "rotation"):
        emb = nn.Embedding(16, D)
        torch.manual_seed(0)
        q = VectorQuantizerEMA(emb, QuantizerConfig(codebook_update=update, lookup=lookup, gradient=gradient), seed=0)
        q.train()
        q(latents(0))
        h = latents(1).requires_grad_(True)
        out = q(h)
        (out.z_q * latents(2)).sum().backward()
        outs[gradient] = (out.z_q.detach(), out.indices, h.grad)
    assert torch.equal(outs["ste"][0], outs["rotation"][0]) and torch.equal(outs["ste"][1], outs["rotation"][1])
    assert torch.isfinite(outs["rotation"][2]).all()
    assert not torch.allclose(outs["ste"][2], outs["rotation"][2])


def test_rotation_is_refused_for_fsq():
    with pytest.raises(ValueError, match="gradient=ste"):
        QuantizerConfig(kind="fsq", gradient="rotation")


# ----------------------------------------------------------------------------- simvq
def make_simvq(k: int = 16, **overrides) -> SimVQ:
    return SimVQ(nn.Embedding(k, D), QuantizerConfig(kind="simvq", **overrides), seed=3)


def test_simvq_codebook_is_c_times_w_and_only_w_learns():
    q = make_simvq(beta=0.4)
    torch.testing.assert_close(q.codebook, q.basis @ q.weight, rtol=0, atol=0)  # W = I: E = C at the start
    assert not q.codebook.requires_grad and not q.basis.requires_grad
    h = latents(0).requires_grad_(True)
    q.train()
    out = q(h)
    e = q.codebook.detach()[out.indices].permute(0, 3, 1, 2)
    # nearest in E, forward value e (straight-through), the loss as in the paper
    d2 = torch.cdist(flat_rows(h.detach()), q.codebook.detach())
    assert torch.equal(out.indices.reshape(-1), d2.argmin(1))
    torch.testing.assert_close(out.z_q, e, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.loss, 0.4 * F.mse_loss(h, e) + F.mse_loss(e, h), rtol=1e-6, atol=0)
    out.loss.backward()
    assert q.weight.grad is not None and q.weight.grad.abs().sum() > 0
    torch.testing.assert_close(h.grad, 0.4 * 2 * (h.detach() - e) / h.numel())  # commitment only reaches h
    # a step on W moves every code, used or not; the VQModel's copy follows at the next forward or sync
    used = set(out.indices.unique().tolist())
    before = q.codebook.detach().clone()
    with torch.no_grad():
        q.weight -= 0.5 * q.weight.grad
    assert torch.equal(q.codebook, before)  # stale until synced
    q.sync_codebook()
    torch.testing.assert_close(q.codebook, q.basis @ q.weight, rtol=0, atol=0)
    unused = [k for k in range(16) if k not in used]
    assert unused and not torch.allclose(q.codebook[unused], before[unused])
    q.eval()
    q(latents(1))
    torch.testing.assert_close(q.codebook, q.basis @ q.weight, rtol=0, atol=0)


def test_simvq_basis_comes_from_the_seed():
    a, b = make_simvq(), make_simvq()
    assert torch.equal(a.basis, b.basis)
    other = SimVQ(nn.Embedding(16, D), QuantizerConfig(kind="simvq"), seed=4)
    assert not torch.equal(a.basis, other.basis)


# ----------------------------------------------------------------------------- fsq
def test_fsq_levels_are_validated_or_derived():
    assert fsq_levels([8, 5, 5, 5], 4, 1000) == [8, 5, 5, 5]
    assert fsq_levels(None, 3, 32) == [4, 4, 2]
    assert math.prod(fsq_levels(None, 4, 16384)) == 16384
    with pytest.raises(ValueError, match=r"give 3 levels"):
        fsq_levels([8, 5, 5, 5], 3, 1000)
    with pytest.raises(ValueError, match=r"set model.codebook_size=1000"):
        fsq_levels([8, 5, 5, 5], 4, 1024)
    with pytest.raises(ValueError, match=r"set quantizer.levels"):
        fsq_levels(None, 3, 6)


def test_fsq_config_errors_are_one_line_and_name_the_key():
    from vqldm.autoencoder.config import load_autoencoder_config

    cfg = load_autoencoder_config("tiny", ["quantizer.kind=fsq"])
    assert cfg.quantizer.levels == [4, 4, 2]  # derived, recorded in config.yaml
    with pytest.raises(UserError, match="model.codebook_size=30") as err:
        load_autoencoder_config("tiny", ["quantizer.kind=fsq", "quantizer.levels=[5, 3, 2]"])
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="give 3 levels"):
        load_autoencoder_config("tiny", ["quantizer.kind=fsq", "quantizer.levels=[8, 4]"])
    with pytest.raises(UserError, match="kind fsq only"):
        load_autoencoder_config("tiny", ["quantizer.levels=[4, 4, 2]"])


def test_fsq_grid_is_in_mixed_radix_order():
    grid = fsq_grid([3, 2])
    # index k = j0 + 3 j1, values -1 + 2 j / (L - 1)
    expected = torch.tensor([[-1.0, -1.0], [0.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    assert torch.equal(grid, expected)
    assert grid.unique(dim=0).shape[0] == 6


@pytest.mark.parametrize("levels", [[4, 4, 2], [8, 5, 3], [7, 6, 5]])
def test_fsq_rounding_is_the_nearest_grid_row_and_straight_through(levels):
    k = math.prod(levels)
    q = FSQ(nn.Embedding(k, D), QuantizerConfig(kind="fsq", levels=levels, beta=0.3))
    torch.testing.assert_close(q.codebook, fsq_grid(levels), rtol=0, atol=0)
    h = latents(0, scale=0.8).requires_grad_(True)  # some values outside [-1, 1]
    assert (h.abs() > 1).any()
    q.train()
    out = q(h)
    lookup = q.codebook.detach()[out.indices].permute(0, 3, 1, 2)
    torch.testing.assert_close(out.z_q, lookup, rtol=0, atol=1e-6)
    # the Euclidean nearest grid row of the raw h: what a VQModel holding the grid picks
    assert torch.equal(out.indices.reshape(-1), torch.cdist(flat_rows(h.detach()), q.codebook).argmin(1))
    # straight-through: the identity into h (through the clamp too), and beta ||h - clamp(h)||^2
    g = latents(1)
    (out.z_q * g).sum().backward(retain_graph=True)
    torch.testing.assert_close(h.grad, g)
    h.grad = None
    out.loss.backward()
    torch.testing.assert_close(h.grad, 0.3 * 2 * (h.detach() - h.detach().clamp(-1, 1)) / h.numel())
    assert float(out.codebook_loss) == 0.0
    inside = FSQ(nn.Embedding(k, D), QuantizerConfig(kind="fsq", levels=levels))(latents(0).clamp(-1, 1))
    assert float(inside.loss) == 0.0


# ----------------------------------------------------------------------------- every kind: the invariant
KINDS = {"vq": {}, "vq-rotation": {"gradient": "rotation"}, "simvq": {"kind": "simvq"},
         "simvq-rotation": {"kind": "simvq", "gradient": "rotation"}, "fsq": {"kind": "fsq"}}


@pytest.mark.parametrize("name", list(KINDS))
def test_decode_quantize_equals_decode_lookup_equals_diffusers(name):
    torch.manual_seed(0)
    cfg = AutoencoderModelConfig(block_out_channels=[8, 16], latent_channels=3, codebook_size=32, norm_num_groups=4,
                                 mid_block_add_attention=False)
    vq = build_vqmodel(cfg, 16, 1)
    model = VQAutoencoder(vq, QuantizerConfig(**KINDS[name]))
    params = [p for p in model.parameters() if p.requires_grad]
    assert not vq.quantize.embedding.weight.requires_grad or name.startswith("vq")
    opt = torch.optim.SGD(params, lr=0.1)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    model.train()
    for _ in range(2):
        rec, q, h = model(x)
        ((rec - x).abs().mean() + q.loss).backward()
        opt.step()
        opt.zero_grad()
    model.quantizer.sync_codebook()
    model.eval()
    with torch.no_grad():
        rec, out, h = model(x)
        z_q, _, (_, _, idx) = vq.quantize(h)
        assert torch.equal(idx.view(out.indices.shape), out.indices)
        assert torch.equal(nearest_codes(vq, h), out.indices)
        lookup = vq.quantize.embedding.weight[out.indices].permute(0, 3, 1, 2)
        torch.testing.assert_close(vq_decode(vq, lookup), rec, rtol=0, atol=1e-5)
        torch.testing.assert_close(vq.decode(h).sample, rec, rtol=0, atol=1e-5)


def test_blocked_nearest_codes_equal_one_cdist_and_fit_two_to_the_sixteen(monkeypatch):
    from diffusers import VQModel

    import vqldm.autoencoder.quantizer as ae_quantizer

    levels = [16, 16, 16, 16]
    vq = VQModel(in_channels=1, out_channels=1, block_out_channels=(8,), latent_channels=4, norm_num_groups=4,
                 num_vq_embeddings=math.prod(levels), sample_size=8)
    with torch.no_grad():
        vq.quantize.embedding.weight.copy_(fsq_grid(levels))
    h = latents(0, b=8, hw=16, d=4, scale=0.7)  # 2048 vectors x 65536 codes: 512 MB in one cdist
    idx = nearest_codes(vq, h)  # blocks of 256 vectors: 64 MB at a time
    fsq = FSQ(vq.quantize.embedding, QuantizerConfig(kind="fsq", levels=levels))
    assert torch.equal(idx, fsq.indices(h))
    monkeypatch.setattr(ae_quantizer, "NEAREST_CODE_BLOCK", 300 * 64)  # K = 64, blocks of 300 rows
    small = VQModel(in_channels=1, out_channels=1, block_out_channels=(8,), latent_channels=4, norm_num_groups=4,
                    num_vq_embeddings=64, sample_size=8)
    h = latents(1, b=4, hw=20, d=4)
    _, _, (_, _, full) = small.quantize(h)
    assert torch.equal(nearest_codes(small, h).reshape(-1), full)


# ----------------------------------------------------------------------------- every kind from the CLI
CLI_KINDS = {"fsq": ["--set", "quantizer.kind=fsq"], "simvq": ["--set", "quantizer.kind=simvq"],
             "vq-rotation": ["--set", "quantizer.gradient=rotation"], "residual": ["--set", "quantizer.kind=residual"],
             "hierarchical": ["--set", "quantizer.kind=hierarchical"]}
FAST = ["--set", "train.progress=false", "--set", "train.checkpoint_every=3", "--set", "train.keep_checkpoints=10",
        "--set", "train.image_every=100", "--set", "train.log_every=3", "--set", "data.max_images=128",
        "--set", "train.eval_max_images=32"]


def train_ae(out, kind, *extra) -> int:
    from vqldm.cli.main import main

    return main(["train-autoencoder", "--config", "tiny", "--data", "fashion-mnist", "--out", str(out), *FAST,
                 *CLI_KINDS[kind], *extra])


@pytest.fixture(scope="module")
def ae_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    runs = {}
    for kind in CLI_KINDS:
        runs[kind] = root / kind
        assert train_ae(runs[kind], kind, "--max-steps", "8") == 0
    return runs


@pytest.mark.slow  # three tiny trainings, ~15 s
@pytest.mark.parametrize("kind", list(CLI_KINDS))
def test_every_kind_exports_a_plain_vqmodel_that_decodes_identically(kind, ae_runs):
    from vq_export import check_plain_export

    run = ae_runs[kind]
    check = check_plain_export(run)
    own, vq = check.own, check.vq
    if kind == "simvq":
        torch.testing.assert_close(vq.quantize.embedding.weight, own.quantizer.basis @ own.quantizer.weight, rtol=0, atol=0)
        assert not torch.equal(own.quantizer.weight, torch.eye(D))  # W was trained
    if kind == "fsq":
        from vqldm.autoencoder.config import AutoencoderRunConfig
        from vqldm.plumbing.config import load_config

        assert torch.equal(vq.quantize.embedding.weight, fsq_grid(load_config(AutoencoderRunConfig, run / "config.yaml").quantizer.levels))
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("codebook_usage", "perplexity", "dead_codes"):
        assert key in metrics["holdout"]
    assert metrics["restarts"] == 0 or kind not in ("fsq", "simvq")  # a fixed grid, a basis: nothing to restart


@pytest.mark.slow  # two tiny trainings per kind, ~20 s
@pytest.mark.parametrize("kind", ["fsq", "simvq", "residual", "hierarchical"])
def test_every_kind_resumes_bit_exactly(kind, tmp_path):
    from vq_export import assert_same_checkpoints

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_ae(straight, kind, "--max-steps", "6") == 0
    assert train_ae(resumed, kind, "--max-steps", "3") == 0
    assert train_ae(resumed, kind, "--max-steps", "6", "--resume") == 0
    a = assert_same_checkpoints(straight / "checkpoints" / "step-00000006", resumed / "checkpoints" / "step-00000006")
    if kind == "simvq":
        assert "quantizer.weight" in a["model"] and "quantizer.basis" in a["model"]
    exported = [(d / "vqvae" / "diffusion_pytorch_model.safetensors").read_bytes() for d in (straight, resumed)]
    assert exported[0] == exported[1]


@pytest.mark.slow  # stage 2 on each new kind: diffusion, both priors, generate (~40 s)
@pytest.mark.parametrize("kind", ["fsq", "simvq", "vq-rotation", "residual", "hierarchical"])
def test_stage_two_runs_on_every_kind(kind, ae_runs, tmp_path):
    from vqldm.cli.main import main

    ae = str(ae_runs[kind])
    common = ["--data", "fashion-mnist", "--set", "data.max_images=64", "--set", "cache.holdout_max_images=16",
              "--set", "train.progress=false", "--set", "train.image_every=1000", "--set", "train.num_sample_images=2"]
    assert main(["train-diffusion", "--config", "tiny", "--autoencoder", ae, "--out", str(tmp_path / "ldm"),
                 "--max-steps", "2", "--set", "train.sample_steps=2", *common]) == 0
    assert main(["generate", "--model", str(tmp_path / "ldm" / "pipeline"), "--num-images", "2", "--steps", "2",
                 "--no-progress", "--device", "cpu", "--out", str(tmp_path / "ldm.png")]) == 0
    for prior in ("masked", "autoregressive"):
        out = tmp_path / prior
        assert main(["train-prior", "--kind", prior, "--config", "tiny", "--autoencoder", ae, "--out", str(out),
                     "--max-steps", "2", *common]) == 0
        assert main(["generate", "--model", str(out / "prior"), "--num-images", "2", "--no-progress", "--device", "cpu",
                     "--out", str(tmp_path / f"{prior}.png")]) == 0
        assert (tmp_path / f"{prior}.png").is_file()
    if kind in ("residual", "hierarchical"):  # evaluate reads every kind (fsq/simvq/vq are plain VQModels)
        ev = ["--data", "fashion-mnist", "--no-progress", "--device", "cpu", "--batch-size", "16"]
        assert main(["evaluate", "autoencoder", "--model", ae, "--max-images", "32", "--out", str(tmp_path / "ev-ae"), *ev]) == 0
        report = json.loads((tmp_path / "ev-ae" / "report.json").read_text())
        stages = 2
        assert report["codebooks"] == stages and report["codebook"]["perplexity_max"] == stages * report["codebook_size"]
        from vqldm.evaluation.reconstruction import format_autoencoder_report

        k = report["codebook_size"]  # the printed usage counts every stage's table (it once read "512/256 codes")
        assert f"/{stages * k} codes: {stages} tables of {k}," in format_autoencoder_report(report)
        for model in (tmp_path / "ldm" / "pipeline", tmp_path / "masked" / "prior"):
            assert main(["evaluate", "generation", "--model", str(model), "--num-samples", "20", "--steps", "2",
                         "--out", str(tmp_path / f"ev-{model.parent.name}"), *ev]) == 0


@pytest.mark.slow  # two tiny trainings per kind
@pytest.mark.parametrize("kind", ["fsq", "simvq", "residual"])
def test_every_kind_steps_without_reading_back(kind, tmp_path):
    """The lean step (issue 21) holds for every quantizer module: no device-to-host read per training step
    (vq+rotation runs vq's module, covered by test_lean_step; hierarchical runs residual's)."""
    from test_lean_step import QUIET, per_step_reads  # the host-read counter of the lean-step tests

    def argv(steps, name):
        return ["train-autoencoder", "--config", "tiny", "--data", "fashion-mnist", "--out", str(tmp_path / name),
                "--max-steps", str(steps), "--set", "data.max_images=512", "--set", "train.eval_max_images=8",
                "--set", "quantizer.restart_every=1000", *CLI_KINDS[kind], *QUIET]

    assert per_step_reads(argv) == 0


def test_shipped_tokenizer_preset_differs_from_fashion_mnist_only_where_measured():
    """`fashion-mnist-fsq` (the shipped model's stage 1, benchmarks/shipped_candidates.sh) is the `fashion-mnist`
    preset with FSQ [8, 5, 5, 5] and 3000 steps: nothing else may drift apart between the two files."""
    import math
    from dataclasses import asdict

    from vqldm.autoencoder.config import load_autoencoder_config

    fsq, base = asdict(load_autoencoder_config("fashion-mnist-fsq")), asdict(load_autoencoder_config("fashion-mnist"))
    changed = {f"{section}.{k}" for section in base for k in base[section] if base[section][k] != fsq[section][k]}
    assert changed == {"quantizer.kind", "quantizer.levels", "model.codebook_size", "train.max_steps"}
    assert fsq["quantizer"]["kind"] == "fsq" and math.prod(fsq["quantizer"]["levels"]) == fsq["model"]["codebook_size"] == 1000
