"""Invariants of the training-time quantizer (autoencoder/quantizer.py), swept over its flags.

* the forward value is exactly the codebook rows at the returned indices, and those are the nearest codes;
* the straight-through estimator passes the gradient of the identity into the encoder;
* beta weights the commitment term (encoder side), the codebook term has weight 1 (gradient mode);
* an EMA step moves a used code toward the mean of its assigned vectors and leaves unused codes alone;
* a dead code is restarted from a current encoder output;
* the codebook is initialised from encoder outputs (every code in use), unlike diffusers' tiny uniform ball;
* vqldm's nearest code is diffusers' nearest code, so the exported VQModel decodes what was trained.
* ``lookup: cosine`` keeps unit-norm codes, picks the largest cosine whatever ||h||, and a run trained with it
  exports a VQModel that plain diffusers decodes identically (same indices, same images).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqldm.autoencoder.model import AutoencoderModelConfig, VQAutoencoder, build_vqmodel, vq_decode
from vqldm.autoencoder.quantizer import QuantizerConfig, VectorQuantizerEMA, kmeans, straight_through

K, D = 16, 3


def make_quantizer(seed: int = 0, **overrides) -> VectorQuantizerEMA:
    emb = nn.Embedding(K, D)
    nn.init.uniform_(emb.weight, -1.0 / K, 1.0 / K)  # diffusers' initialisation
    return VectorQuantizerEMA(emb, QuantizerConfig(**overrides), seed=seed)


def latents(seed: int = 0, b: int = 4, hw: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, D, hw, hw, generator=g) * 2.0 + 0.5


def flat_rows(h: torch.Tensor) -> torch.Tensor:
    return h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])


SWEEP = list(itertools.product(["ema", "gradient"], ["kmeans", "samples", "uniform"]))


@pytest.mark.parametrize("update,init", SWEEP)
def test_output_is_codebook_rows_at_returned_indices(update, init):
    q = make_quantizer(codebook_update=update, init=init)
    h = latents()
    q.train()
    q(h)  # initialise + one update
    q.eval()  # no update: the codebook is the same before and after the forward
    out = q(h)
    codebook = q.codebook.detach()
    lookup = codebook[out.indices].permute(0, 3, 1, 2)  # B x D x H x W
    torch.testing.assert_close(out.z_q, lookup, rtol=0, atol=1e-6)  # h + (e - h) equals e up to rounding
    # ... and the returned indices are the nearest codes (squared distance, brute force)
    d2 = ((flat_rows(h)[:, None, :] - codebook[None]) ** 2).sum(-1)
    nearest_d2 = d2.gather(1, out.indices.reshape(-1, 1)).squeeze(1)
    torch.testing.assert_close(nearest_d2, d2.min(dim=1).values)
    assert out.indices.shape == (4, 6, 6) and out.indices.dtype == torch.long


@pytest.mark.parametrize("update", ["ema", "gradient"])
def test_training_forward_uses_the_codebook_before_its_update(update):
    q = make_quantizer(codebook_update=update)
    q.train()
    q(latents(0))
    before = q.codebook.detach().clone()
    out = q(latents(1))  # this forward also updates the codebook (EMA) afterwards
    torch.testing.assert_close(out.z_q.detach(), before[out.indices].permute(0, 3, 1, 2), rtol=0, atol=1e-6)


def test_straight_through_is_identity_gradient():
    h = torch.randn(2, D, 3, 3, requires_grad=True)
    target = torch.randn(2, D, 3, 3)
    out = straight_through(h, target)
    assert torch.equal(out.detach(), (h + (target - h)).detach())
    weights = torch.randn_like(h)
    (out * weights).sum().backward()
    torch.testing.assert_close(h.grad, weights)


@pytest.mark.parametrize("update", ["ema", "gradient"])
def test_gradient_reaches_the_encoder_through_the_quantizer(update):
    torch.manual_seed(0)
    cfg = AutoencoderModelConfig(block_out_channels=[8, 16], latent_channels=3, codebook_size=K, norm_num_groups=4,
                                 mid_block_add_attention=False)
    model = VQAutoencoder(build_vqmodel(cfg, 16, 1), QuantizerConfig(codebook_update=update))
    model.train()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    rec, q, h = model(x)
    (rec - x).abs().mean().backward()  # reconstruction only: the encoder can learn only via straight-through
    enc_grads = [p.grad for p in model.vqmodel.encoder.parameters()]
    assert all(g is not None for g in enc_grads)
    assert sum(float(g.abs().sum()) for g in enc_grads) > 0
    assert all(torch.isfinite(g).all() for g in enc_grads)
    codebook = model.vqmodel.quantize.embedding.weight
    if update == "ema":
        assert not codebook.requires_grad  # EMA mode: the codebook is not a gradient parameter


def test_beta_weights_the_commitment_term_on_the_encoder_side():
    beta = 0.37
    q = make_quantizer(codebook_update="gradient", beta=beta, restart_dead_codes=False)
    q.train()
    q(latents(0))  # initialise
    q.eval()
    h = latents(1).requires_grad_(True)
    out = q(h)
    out.loss.backward()
    e = q.codebook.detach()[out.indices].permute(0, 3, 1, 2)
    # d/dh beta * mean((h - sg[e])^2) = beta * 2 (h - e) / numel -- beta on the encoder (commitment) side
    torch.testing.assert_close(h.grad, beta * 2 * (h.detach() - e) / h.numel())
    # the codebook side, mean((sg[h] - e)^2), has weight 1
    expected = torch.zeros_like(q.codebook).index_add_(
        0, out.indices.reshape(-1), (2 * (e - h.detach()) / h.numel()).permute(0, 2, 3, 1).reshape(-1, D))
    torch.testing.assert_close(q.codebook.grad, expected)


def test_ema_update_moves_used_codes_toward_their_vectors_and_leaves_others():
    q = make_quantizer(ema_decay=0.9, restart_dead_codes=False)
    with torch.no_grad():
        codes = torch.arange(K, dtype=torch.float32)[:, None].repeat(1, D) * 10.0  # well separated
        q.codebook.copy_(codes)
        q.cluster_size.fill_(5.0)
        q.embed_sum.copy_(codes * 5.0)
        q.initialized.fill_(True)
    # every vector sits near code 2 (at 21 instead of 20), so code 2 is the only one used
    h = torch.full((2, D, 2, 2), 21.0) + 0.1 * torch.randn(2, D, 2, 2)
    q.train()
    out = q(h)
    assert set(out.indices.unique().tolist()) == {2}
    target = flat_rows(h).mean(0)
    assert (q.codebook[2] - target).norm() < (codes[2] - target).norm()  # moved toward its vectors
    # exact EMA: N <- g N + (1-g) n,  m <- g m + (1-g) sum,  e = m / N (Laplace smoothing ~1e-5)
    n = 8.0
    expected = (0.9 * codes[2] * 5.0 + 0.1 * flat_rows(h).sum(0)) / (0.9 * 5.0 + 0.1 * n)
    torch.testing.assert_close(q.codebook[2], expected, rtol=1e-4, atol=1e-4)
    unused = [k for k in range(K) if k != 2]
    torch.testing.assert_close(q.codebook[unused], codes[unused], rtol=1e-4, atol=1e-4)


def test_dead_code_is_restarted_from_current_encoder_outputs():
    q = make_quantizer(dead_code_threshold=1.0, restart_every=1)
    q.train()
    q(latents(0))  # initialise: every code starts at the average hit rate
    with torch.no_grad():
        q.codebook[5] = 1e6  # far away: never nearest, and its EMA count is below the threshold
        q.embed_sum[5] = 1e6 * 0.1
        q.cluster_size[5] = 0.1
    h = latents(1)
    restarts_before = int(q.restarts)
    q(h)
    assert int(q.restarts) > restarts_before
    new = q.codebook[5].detach()
    assert new.abs().max() < 1e3
    rows = flat_rows(h)
    assert torch.isclose(rows, new[None]).all(dim=1).any(), "a restarted code must be one of the current encoder outputs"
    assert float(q.cluster_size[5]) >= 1.0  # restarted with the threshold count, so it is not dead again at once


def test_no_restart_when_disabled():
    q = make_quantizer(restart_dead_codes=False)
    q.train()
    q(latents(0))
    with torch.no_grad():
        q.cluster_size[5] = 0.0
    q(latents(1))
    assert int(q.restarts) == 0


def test_restarts_stop_after_restart_until():
    q = make_quantizer(restart_until=2)
    q.train()
    q(latents(0))  # step 1: initialise
    with torch.no_grad():
        q.cluster_size[5] = 0.0
    q(latents(1))  # step 2: still restarting
    after_two = int(q.restarts)
    assert after_two > 0
    with torch.no_grad():
        q.codebook[5] = 1e6  # never nearest again, so it stays dead
        q.cluster_size[5] = 0.0
    q(latents(2))  # step 3: past the cut-off
    assert int(q.restarts) == after_two and float(q.codebook[5, 0]) > 1e3  # not replaced by an encoder output


def test_codebook_is_initialised_from_encoder_outputs():
    h = latents(0, b=8, hw=8) / 2.0 + 3.0  # encoder outputs away from the origin, as they usually are
    rows = flat_rows(h)
    usage = {}
    for init in ("kmeans", "samples", "uniform"):
        q = make_quantizer(init=init, restart_dead_codes=False, ema_decay=0.999)
        q.eval()
        if init != "uniform":
            q.initialize(rows)
        idx = q(h).indices
        usage[init] = idx.unique().numel() / K
        if init == "samples":
            assert all(torch.isclose(rows, c[None]).all(dim=1).any() for c in q.codebook.detach())
    assert usage["kmeans"] == 1.0
    assert usage["samples"] >= 0.75
    assert usage["uniform"] < 0.5  # diffusers' tiny ball: a handful of codes take everything


def test_kmeans_is_seeded_and_has_no_empty_clusters():
    x = torch.randn(300, D)
    a = kmeans(x, K, 5, torch.Generator().manual_seed(1))
    b = kmeans(x, K, 5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    counts = torch.bincount(torch.cdist(x, a).argmin(1), minlength=K)
    assert (counts > 0).all()


def test_uniform_assignment_has_perplexity_equal_to_the_number_of_codes():
    q = make_quantizer(restart_dead_codes=False)
    with torch.no_grad():
        q.codebook.copy_(torch.randn(K, D) * 10)
        q.initialized.fill_(True)
    q.eval()
    h = q.codebook.detach().clone().T.reshape(1, D, 4, 4)  # each code exactly once
    out = q(h)
    assert sorted(out.indices.flatten().tolist()) == list(range(K))
    assert float(out.perplexity) == pytest.approx(K, rel=1e-5)


def test_non_finite_batch_leaves_the_codebook_untouched():
    q = make_quantizer()
    q.train()
    q(latents(0))
    state = {k: v.clone() for k, v in q.state_dict().items() if k != "steps"}
    codebook = q.codebook.detach().clone()
    h = latents(1)
    h[0, 0, 0, 0] = float("nan")
    q(h)
    assert torch.equal(q.codebook, codebook)
    for k, v in state.items():
        assert torch.equal(getattr(q, k), v), k


def test_vqldm_nearest_code_is_diffusers_nearest_code():
    torch.manual_seed(0)
    cfg = AutoencoderModelConfig(block_out_channels=[8, 16], latent_channels=3, codebook_size=K, norm_num_groups=4,
                                 mid_block_add_attention=False)
    vq = build_vqmodel(cfg, 16, 1)
    model = VQAutoencoder(vq, QuantizerConfig())
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    model.train()
    model(x)  # k-means init of the shared codebook from encoder outputs
    model.eval()
    with torch.no_grad():
        rec, out, h = model(x)
        z_q, _, (_, _, idx) = vq.quantize(h)
        assert torch.equal(idx.view(out.indices.shape), out.indices)
        # decode(quantize(h)) == decode(lookup(indices)) == diffusers' decode
        lookup = vq.quantize.embedding.weight[out.indices].permute(0, 3, 1, 2)
        torch.testing.assert_close(vq_decode(vq, lookup), rec, rtol=0, atol=1e-5)
        torch.testing.assert_close(vq.decode(h).sample, rec, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- cosine (l2-normalised) lookup
def unit_norms(q: VectorQuantizerEMA) -> torch.Tensor:
    return q.codebook.detach().norm(dim=1)


@pytest.mark.parametrize("init", ["kmeans", "samples", "uniform"])
def test_cosine_lookup_picks_the_code_of_largest_cosine_and_outputs_unit_codes(init):
    q = make_quantizer(lookup="cosine", init=init)
    torch.testing.assert_close(unit_norms(q), torch.ones(K))  # unit norm from construction on
    q.train()
    q(latents(0))  # initialise + one EMA update (+ restarts)
    torch.testing.assert_close(unit_norms(q), torch.ones(K))
    q.eval()
    h = latents(1)
    out = q(h)
    codebook = q.codebook.detach()
    torch.testing.assert_close(out.z_q, codebook[out.indices].permute(0, 3, 1, 2), rtol=0, atol=1e-6)
    # k = argmax_j cos(h, e_j), whatever ||h||: scaling h changes nothing
    cos = F.normalize(flat_rows(h), dim=1) @ codebook.T
    torch.testing.assert_close(cos.gather(1, out.indices.reshape(-1, 1)).squeeze(1), cos.max(dim=1).values)
    assert torch.equal(q(h * 7.0).indices, out.indices)
    # the commitment term is measured between h / ||h|| and its code
    hn = F.normalize(h, dim=1)
    torch.testing.assert_close(out.commitment_loss, F.mse_loss(hn, out.z_q))


def test_cosine_ema_update_and_restarts_keep_the_codebook_on_the_unit_sphere():
    q = make_quantizer(lookup="cosine", dead_code_threshold=1.0, restart_every=1)
    q.train()
    q(latents(0))
    with torch.no_grad():  # code 5: dead, pointing away from everything
        q.cluster_size[5] = 0.1
    before = int(q.restarts)
    for seed in range(1, 6):
        q(latents(seed))
        torch.testing.assert_close(unit_norms(q), torch.ones(K))
    assert int(q.restarts) > before
    # a restarted code is a normalised current encoder output
    q2 = make_quantizer(lookup="cosine", dead_code_threshold=1.0)
    q2.train()
    q2(latents(0))
    with torch.no_grad():
        q2.cluster_size[5] = 0.0
    h = latents(1)
    q2(h)
    rows = F.normalize(flat_rows(h), dim=1)
    assert torch.isclose(rows, q2.codebook[5].detach()[None], atol=1e-6).all(dim=1).any()


def test_cosine_gradient_reaches_the_encoder_through_the_normalisation():
    h = latents(0).requires_grad_(True)
    q = make_quantizer(lookup="cosine")
    q.train()
    out = q(h)
    weights = torch.randn_like(h)
    (out.z_q * weights).sum().backward()
    # straight-through of h / ||h||: the gradient is the Jacobian of the normalisation applied to the weights
    h2 = h.detach().clone().requires_grad_(True)
    (F.normalize(h2, dim=1) * weights).sum().backward()
    torch.testing.assert_close(h.grad, h2.grad)


def test_cosine_lookup_needs_the_ema_codebook():
    with pytest.raises(ValueError, match="cosine"):
        QuantizerConfig(lookup="cosine", codebook_update="gradient")


@pytest.mark.slow  # trains a cosine-lookup autoencoder, ~6 s; test_autoencoder_export covers the default export
def test_cosine_export_decodes_identically_in_plain_diffusers(tmp_path):
    """A run trained by `train-autoencoder` with quantizer.lookup=cosine exports a VQModel whose own (Euclidean)
    lookup picks the training model's codes and decodes the same images: decode(quantize(h)) ==
    decode(lookup(indices)) == the training model's reconstruction."""
    from vq_export import check_plain_export

    from vqldm.autoencoder.config import AutoencoderRunConfig, load_autoencoder_config
    from vqldm.autoencoder.train import train_autoencoder
    from vqldm.plumbing.config import load_config

    run = tmp_path / "cosine"
    cfg = load_autoencoder_config("tiny", ["data.max_images=128", "train.max_steps=10", "train.eval_max_images=32",
                                           "train.progress=false", "quantizer.lookup=cosine"])
    train_autoencoder(cfg, run, data="fashion-mnist")
    assert load_config(AutoencoderRunConfig, run / "config.yaml").quantizer.lookup == "cosine"
    check = check_plain_export(run)
    codebook = check.vq.quantize.embedding.weight.detach()
    torch.testing.assert_close(codebook.norm(dim=1), torch.ones(codebook.shape[0]))
    assert check.h.norm(dim=1).std() > 1e-3  # latents of many norms: the lookup really is norm-free
    with torch.no_grad():
        lookup = codebook[check.indices].permute(0, 3, 1, 2)
        torch.testing.assert_close(vq_decode(check.vq, lookup), check.reconstruction, rtol=0, atol=1e-5)
