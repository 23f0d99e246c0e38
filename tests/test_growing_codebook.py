"""The growing codebook of the vq quantizer (``quantizer.grow_from``; autoencoder/growing.py).

* the active count follows the schedule (a function of the optimizer step) and stops at K;
* inactive codes are never assigned in training, even when they lie nearest;
* a split turns the highest-distortion codes into e_p -+ delta (delta from the seeded generator) and keeps
  the totals of the EMA statistics (sum N, sum m, sum D);
* after ``sync_codebook`` the inactive rows copy active ones, so a plain VQModel picks the same codes and
  decodes identically, also when training stopped before K;
* the quantizer state round-trips (resume in process); ``grow_from=None`` keeps the state's keys;
* bad combinations are one-line errors naming the key;
* from the CLI (slow): resume is bit-exact across a growth, the export decodes identically in plain
  diffusers, and a step reads nothing back from the device.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vqldm.autoencoder.growing import active_codes, split_codes
from vqldm.autoencoder.model import AutoencoderModelConfig, VQAutoencoder, build_vqmodel, nearest_codes
from vqldm.autoencoder.quantizer import QuantizerConfig, VectorQuantizerEMA
from vqldm.plumbing.errors import UserError

K, D = 32, 3
GROW = {"grow_from": 4, "grow_every": 2}


def latents(seed: int = 0, b: int = 4, hw: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, D, hw, hw, generator=g) * 2.0 + 0.5


def growing(seed: int = 0, **overrides) -> VectorQuantizerEMA:
    return VectorQuantizerEMA(nn.Embedding(K, D), QuantizerConfig(**{**GROW, **overrides}), seed=seed)


def test_schedule_doubles_every_grow_every_steps_and_stops_at_k():
    assert [active_codes(s, 4, 2, 2.0, 32) for s in range(12)] == [4, 4, 8, 8, 16, 16, 32, 32, 32, 32, 32, 32]
    assert [active_codes(s, 4, 1, 1.5, 32) for s in range(7)] == [4, 6, 9, 14, 21, 32, 32]
    assert [active_codes(s, 3, 1, 1.01, 6) for s in range(5)] == [3, 4, 5, 6, 6]  # at least one more code
    assert active_codes(10**9, 1, 1, 2.0, 1 << 16) == 1 << 16


SWEEP = [{"codebook_update": "ema"}, {"codebook_update": "gradient"}, {"lookup": "cosine"}, {"gradient": "rotation"}]


@pytest.mark.parametrize("flags", SWEEP, ids=lambda f: "-".join(f.values()))
def test_active_codes_grow_on_schedule_and_inactive_ones_are_never_assigned(flags):
    q = growing(**flags)
    q.train()
    for step in range(9):
        h = latents(step)
        if step > 0:  # put every inactive row exactly on a latent vector: still never chosen
            with torch.no_grad():
                a = int(q.active)
                q.codebook.data[a:] = h.permute(0, 2, 3, 1).reshape(-1, D)[: K - a]
        out = q(h, step=step)
        assert int(q.active) == active_codes(step, 4, 2, 2.0, K) == q.num_active()
        assert int(out.indices.max()) < int(q.active)
        again = q(latents(100 + step), step=step)  # a second micro-batch of the same optimizer step: no growth
        assert int(q.active) == active_codes(step, 4, 2, 2.0, K) and int(again.indices.max()) < int(q.active)
    assert int(q.active) == K and len(out.indices.unique()) > K // 2  # every row is a code by now


def test_a_split_perturbs_the_highest_distortion_codes_and_keeps_the_statistics_totals():
    g = torch.Generator().manual_seed(0)
    k, a = 8, 3
    codebook = torch.randn(k, D, generator=g)
    cluster_size = torch.tensor([10.0, 40.0, 20.0, 0, 0, 0, 0, 0])
    embed_sum = codebook * cluster_size[:, None]
    distortion = torch.tensor([5.0, 3.0, 9.0, 99.0, 99.0, 0, 0, 0])  # inactive rows' values are ignored
    before = [t.clone() for t in (codebook, cluster_size, embed_sum, distortion)]
    state = torch.Generator().manual_seed(7).get_state()
    split_codes(codebook, cluster_size, embed_sum, distortion, a, a + 2, torch.Generator().set_state(state))
    # parents: codes 2 and 0 (distortion 9 and 5, largest first) -> children at rows 3 and 4
    e, n, m, dd = before
    for parent, child in ((2, 3), (0, 4)):
        mid = (codebook[parent] + codebook[child]) / 2
        torch.testing.assert_close(mid, e[parent])  # e_p -+ delta
        delta = (codebook[child] - codebook[parent]) / 2
        sigma = (dd[parent] / (n[parent] * D)).sqrt()
        assert 0 < delta.norm() < sigma * D  # small, relative to the cell's spread
        assert cluster_size[parent] == cluster_size[child] == n[parent] / 2
        assert distortion[parent] == distortion[child] == dd[parent] / 2
        torch.testing.assert_close(embed_sum[child] / cluster_size[child], codebook[child])  # m / N = e
    torch.testing.assert_close(codebook[1], e[1], rtol=0, atol=0)  # the low-distortion code is untouched
    torch.testing.assert_close(cluster_size.sum(), n.sum())
    torch.testing.assert_close(embed_sum.sum(0), m.sum(0))
    torch.testing.assert_close(distortion[:5].sum(), dd[:3].sum())
    # the perturbation comes from the generator: the same state, the same split
    again = [t.clone() for t in before]
    split_codes(*again, a, a + 2, torch.Generator().set_state(state))
    assert torch.equal(again[0][:5], codebook[:5])


@pytest.mark.parametrize("update", ["ema", "gradient"])
def test_a_plain_vqmodel_decodes_a_codebook_that_stopped_growing_before_k(update):
    torch.manual_seed(0)
    cfg = AutoencoderModelConfig(block_out_channels=[8, 16], latent_channels=D, codebook_size=K, norm_num_groups=4,
                                 mid_block_add_attention=False)
    vq = build_vqmodel(cfg, 16, 1)
    model = VQAutoencoder(vq, QuantizerConfig(codebook_update=update, **GROW))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    model.train()
    for step in range(3):  # active: 4, 4, 8
        rec, q, h = model(x, step=step)
        ((rec - x).abs().mean() + q.loss).backward()
        opt.step()
        opt.zero_grad()
    assert model.quantizer.num_active() == 8
    model.quantizer.sync_codebook()
    e = vq.quantize.embedding.weight
    assert torch.equal(e[8:], e[torch.arange(8, K) % 8])  # inactive rows: copies of active codes
    model.eval()
    with torch.no_grad():
        rec, out, h = model(x)
        _, _, (_, _, idx) = vq.quantize(h)  # diffusers' own lookup, no mask
        assert torch.equal(idx.view(out.indices.shape), out.indices) and int(idx.max()) < 8
        assert torch.equal(nearest_codes(vq, h), out.indices)
        torch.testing.assert_close(vq.decode(h).sample, rec, rtol=0, atol=1e-5)


def test_the_state_round_trips_and_a_fixed_codebook_keeps_its_keys():
    fixed = VectorQuantizerEMA(nn.Embedding(K, D), QuantizerConfig())
    assert set(fixed.state_dict()) == {"cluster_size", "embed_sum", "initialized", "restarts", "steps"}
    assert set(growing().state_dict()) == set(fixed.state_dict()) | {"active", "distortion"}
    # an interrupted run (state + generator saved at step 3, loaded into a fresh quantizer) continues exactly
    straight, first = growing(), growing()
    for q in (straight, first):
        q.train()
    for step in range(3):
        straight(latents(step), step=step)
        first(latents(step), step=step)
    second = growing()
    second.load_state_dict(first.state_dict())
    second.codebook.data.copy_(first.codebook)  # the codebook is the VQModel's (saved with it, not here)
    second.generator.set_state(first.generator.get_state())
    second.train()
    assert second.num_active() == 8
    for step in range(3, 7):  # growths at steps 4 and 6
        a, b = straight(latents(step), step=step), second(latents(step), step=step)
        assert torch.equal(a.indices, b.indices)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert torch.equal(straight.codebook, second.codebook)


def test_bad_combinations_are_one_line_errors_naming_the_key():
    from vqldm.autoencoder.config import load_autoencoder_config
    from vqldm.autoencoder.model import init_vqmodel

    cfg = load_autoencoder_config("tiny", ["quantizer.grow_from=4", "quantizer.grow_every=2"])
    assert (cfg.quantizer.grow_from, cfg.quantizer.grow_every, cfg.quantizer.grow_factor) == (4, 2, 2.0)
    cases = {("quantizer.kind=simvq",): "kind vq only", ("quantizer.kind=fsq",): "kind vq only",
             ("model.codebook_size=4",): "model.codebook_size=4", ("quantizer.grow_factor=3",): "grow_factor",
             ("quantizer.grow_every=0",): "grow_every"}
    for extra, match in cases.items():
        with pytest.raises(UserError, match=match) as err:
            load_autoencoder_config("tiny", ["quantizer.grow_from=4", *extra])
        assert "\n" not in str(err.value) and "quantizer.grow" in str(err.value) + match
    with pytest.raises(UserError, match="remove quantizer.grow_from") as err:
        init_vqmodel("no-such-folder", cfg)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- from the CLI
CLI = ["--set", "train.progress=false", "--set", "train.checkpoint_every=3", "--set", "train.keep_checkpoints=10",
       "--set", "train.image_every=100", "--set", "train.log_every=3", "--set", "data.max_images=128",
       "--set", "train.eval_max_images=32", "--set", "quantizer.grow_from=4", "--set", "quantizer.grow_every=2"]


def train_ae(out, *extra) -> int:
    from vqldm.cli.main import main

    return main(["train-autoencoder", "--config", "tiny", "--data", "fashion-mnist", "--out", str(out), *CLI, *extra])


@pytest.mark.slow  # three tiny trainings, ~1 min on a busy machine
def test_a_growing_run_resumes_bit_exactly_and_exports_a_plain_vqmodel(tmp_path):
    from vq_export import assert_same_checkpoints, check_plain_export

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_ae(straight, "--max-steps", "6") == 0  # active 4, 4, 8, 8, 16, 16: stops before K = 32
    assert train_ae(resumed, "--max-steps", "3") == 0
    assert train_ae(resumed, "--max-steps", "6", "--resume") == 0  # across the growth at step 4
    a = assert_same_checkpoints(straight / "checkpoints" / "step-00000006", resumed / "checkpoints" / "step-00000006")
    assert int(a["model"]["quantizer.active"]) == 16
    import json

    assert json.loads((straight / "metrics.json").read_text())["active_codes"] == 16
    exported = [(d / "vqvae" / "diffusion_pytorch_model.safetensors").read_bytes() for d in (straight, resumed)]
    assert exported[0] == exported[1]

    check = check_plain_export(straight, a["model"])  # plain diffusers, K rows
    assert check.vq.quantize.embedding.weight.shape[0] == K and int(check.indices.max()) < 16


@pytest.mark.slow  # two tiny trainings
def test_a_growing_step_reads_nothing_back(tmp_path):
    from test_lean_step import QUIET, per_step_reads  # the host-read counter of the lean-step tests

    def argv(steps, name):  # growths at steps 2, 4 and 6 of the long run, at 2 of the short one
        return ["train-autoencoder", "--config", "tiny", "--data", "fashion-mnist", "--out", str(tmp_path / name),
                "--max-steps", str(steps), "--set", "data.max_images=512", "--set", "train.eval_max_images=8",
                "--set", "quantizer.restart_every=1000", "--set", "quantizer.grow_from=4",
                "--set", "quantizer.grow_every=2", *QUIET]

    assert per_step_reads(argv) == 0
