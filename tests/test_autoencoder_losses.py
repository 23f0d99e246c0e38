"""Stage-1 loss pieces and metrics: reconstruction, hinge / non-saturating losses, LeCAM, adaptive weight, PatchGAN, LPIPS fallback."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from vqldm.autoencoder.losses import (
    LossConfig,
    PatchDiscriminator,
    adaptive_weight,
    decoder_adversarial_loss,
    discriminator_loss,
    generator_loss,
    hinge_d_loss,
    hinge_g_loss,
    lecam_penalty,
    load_lpips,
    perceptual_loss,
    reconstruction_loss,
)
from vqldm.autoencoder.metrics import codebook_stats, psnr, ssim


def test_reconstruction_loss_l1_and_l2():
    x = torch.zeros(2, 1, 4, 4)
    rec = torch.full_like(x, 0.5)
    rec[0, 0, 0, 0] = 2.5
    n = x.numel()
    assert float(reconstruction_loss(rec, x, "l1")) == pytest.approx((0.5 * (n - 1) + 2.5) / n)
    assert float(reconstruction_loss(rec, x, "l2")) == pytest.approx((0.25 * (n - 1) + 6.25) / n)
    assert float(reconstruction_loss(x, x, "l1")) == 0.0


def test_hinge_discriminator_loss():
    # confident and right on both sides: beyond the margin, no loss
    assert float(hinge_d_loss(torch.full((2, 1, 3, 3), 2.0), torch.full((2, 1, 3, 3), -2.0))) == 0.0
    # undecided (logits 0): 0.5 * (relu(1) + relu(1)) = 1
    assert float(hinge_d_loss(torch.zeros(2, 1, 3, 3), torch.zeros(2, 1, 3, 3))) == pytest.approx(1.0)
    real, fake = torch.randn(4, 1, 5, 5), torch.randn(4, 1, 5, 5)
    expected = 0.5 * (torch.clamp(1 - real, min=0).mean() + torch.clamp(1 + fake, min=0).mean())
    torch.testing.assert_close(hinge_d_loss(real, fake), expected)


def test_hinge_generator_loss():
    fake = torch.randn(3, 1, 4, 4)
    torch.testing.assert_close(hinge_g_loss(fake), -fake.mean())
    fake.requires_grad_(True)
    hinge_g_loss(fake).backward()
    torch.testing.assert_close(fake.grad, torch.full_like(fake, -1.0 / fake.numel()))


def test_adaptive_weight_is_ratio_of_last_layer_gradient_norms():
    last = nn.Parameter(torch.randn(4, 3))
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    nll = (a * last).sum()  # d nll / d last = a
    g = (b * last).sum()  # d g / d last = b
    w = adaptive_weight(nll, g, last)
    assert float(w) == pytest.approx(float(a.norm() / (b.norm() + 1e-4)), rel=1e-5)
    assert not w.requires_grad  # a weight, not a path for gradients
    # clamped to [0, max]
    tiny_g = (1e-9 * b * last).sum()
    assert float(adaptive_weight(nll, tiny_g, last, max_weight=50.0)) == 50.0
    # the graph is kept: the caller still back-propagates the losses afterwards
    (nll + g).backward()
    torch.testing.assert_close(last.grad, a + b)


@pytest.mark.parametrize("channels,size,layers,expected", [(1, 32, 3, 2), (3, 32, 3, 2), (1, 16, 2, 2), (3, 64, 3, 6)])
def test_patchgan_output_shape(channels, size, layers, expected):
    disc = PatchDiscriminator(channels, channels=8, n_layers=layers)
    x = torch.randn(2, channels, size, size)
    out = disc(x)
    assert out.shape == (2, 1, expected, expected)  # one logit per overlapping patch
    x.requires_grad_(True)
    disc(x).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_lpips_disabled_by_weight_zero_and_missing_package_warns(monkeypatch):
    messages = []
    assert load_lpips(LossConfig(perceptual_weight=0.0), log=messages.append) is None
    assert messages == []
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips -> ImportError
    assert load_lpips(LossConfig(perceptual_weight=1.0), log=messages.append) is None
    assert len(messages) == 1 and messages[0].startswith("warning:") and "lpips" in messages[0]


def test_perceptual_loss_feeds_rgb_to_lpips():
    seen = []

    class FakeLPIPS(nn.Module):
        def forward(self, a, b):
            seen.append((a.shape, b.shape))
            return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)

    x, rec = torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    assert float(perceptual_loss(FakeLPIPS(), rec, x)) == 1.0
    assert seen == [((2, 3, 8, 8), (2, 3, 8, 8))]


def test_psnr_ssim_and_codebook_stats():
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert torch.all(psnr(x, x) >= 99.0)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    assert torch.all(psnr(noisy, x) < 30) and torch.all(ssim(noisy, x) < 1)
    # [-1, 1] images, data range 1 after mapping to [0, 1]: an error of 0.1 in [0,1] everywhere is 20 dB
    torch.testing.assert_close(psnr(torch.full((1, 1, 4, 4), 0.2), torch.zeros(1, 1, 4, 4)), torch.tensor([20.0]))
    stats = codebook_stats(torch.tensor([5, 5, 0, 0]))
    assert stats["codebook_usage"] == 50.0 and stats["dead_codes"] == 2 and stats["codes_used"] == 2
    assert stats["perplexity"] == pytest.approx(2.0)


def test_offline_perceptual_terms():
    """The focal frequency and gradient losses: zero on a perfect reconstruction, larger for blur, and the
    gradient loss ignores a constant offset (it compares edges, not levels), which an L1 does not."""
    from vqldm.autoencoder.losses import focal_frequency_loss, gradient_loss
    from vqldm.evaluation.calibration import gaussian_blur

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 16, 16, generator=g) * 2 - 1
    for loss in (focal_frequency_loss, gradient_loss):
        assert float(loss(x, x)) == 0.0
        assert float(loss(gaussian_blur(x, 1.0), x)) > float(loss(gaussian_blur(x, 0.5), x)) > 0
    assert float(gradient_loss(x + 0.3, x)) < 1e-6
    assert float(focal_frequency_loss(x + 0.3, x)) > 0  # the DC term differs
    rec = x.clone().requires_grad_(True)
    (focal_frequency_loss(rec * 0.9, x) + gradient_loss(rec * 0.9, x)).backward()
    assert rec.grad is not None and torch.isfinite(rec.grad).all() and rec.grad.abs().sum() > 0


def test_non_saturating_losses_match_their_formulas():
    real, fake = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    expected_d = 0.5 * (torch.log1p(torch.exp(-real)).mean() + torch.log1p(torch.exp(fake)).mean())
    torch.testing.assert_close(discriminator_loss("non_saturating", real, fake), expected_d)
    torch.testing.assert_close(generator_loss("non_saturating", fake), torch.log1p(torch.exp(-fake)).mean())
    torch.testing.assert_close(discriminator_loss("hinge", real, fake), hinge_d_loss(real, fake))
    torch.testing.assert_close(generator_loss("hinge", fake), hinge_g_loss(fake))
    # a confident, correct discriminator has a small loss; a fooled one a large one
    assert float(discriminator_loss("non_saturating", torch.full((4,), 5.0), torch.full((4,), -5.0))) < 0.01
    assert float(discriminator_loss("non_saturating", torch.full((4,), -5.0), torch.full((4,), 5.0))) > 4.9


def test_lecam_penalty_tracks_anchors_and_penalises_only_the_far_side():
    disc = PatchDiscriminator(1, channels=8, n_layers=1)
    assert disc.lecam_anchors.tolist() == [0.0, 0.0] and "lecam_anchors" in disc.state_dict()  # resumes with the disc
    real, fake = torch.full((4,), 2.0), torch.full((4,), -1.0)
    pen = lecam_penalty(disc, real, fake, decay=0.5)
    torch.testing.assert_close(disc.lecam_anchors, torch.tensor([1.0, -0.5]))  # 0.5 * 0 + 0.5 * new
    # relu(2 - (-0.5))^2 + relu(1 - (-1))^2 = 6.25 + 4
    assert float(pen) == pytest.approx(10.25)
    # real logits already below the fake anchor, fake above the real anchor: nothing to penalise
    disc.lecam_anchors.copy_(torch.tensor([-3.0, 3.0]))
    assert float(lecam_penalty(disc, torch.zeros(4), torch.zeros(4), decay=1 - 1e-9)) == 0.0


@pytest.mark.parametrize("key,value", [("disc_loss", "wasserstein"), ("disc_weight", -1.0), ("disc_ramp_steps", -5),
                                       ("lecam_decay", 1.0), ("frequency_weight", float("nan")),
                                       ("disc_layers", 0)])
def test_loss_config_rejects_bad_values(key, value):
    with pytest.raises(ValueError, match=f"loss.{key}"):
        LossConfig(**{key: value})


@pytest.mark.parametrize("kind", ["hinge", "non_saturating"])
def test_decoder_adversarial_loss_leaves_no_gradient_on_the_discriminator(kind):
    disc = PatchDiscriminator(1, channels=8, n_layers=1)
    rec = torch.randn(2, 1, 16, 16, requires_grad=True)
    decoder_adversarial_loss(disc, rec, kind).backward()
    assert rec.grad is not None and rec.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.requires_grad for p in disc.parameters())  # trainable again for its own step


def test_a_discriminator_deeper_than_the_images_is_one_line_before_any_work(tmp_path, capsys):
    """PatchGAN's disc_layers halvings and last two 4x4 convolutions need 3 x 2^disc_layers px: exactly that
    size runs, one pixel less is refused up front naming the depth that fits."""
    from vqldm.autoencoder.losses import LossConfig, PatchDiscriminator, check_discriminator_fits
    from vqldm.cli.main import main
    from vqldm.plumbing.errors import UserError

    for n in (1, 2, 3):
        assert PatchDiscriminator(1, 8, n)(torch.zeros(1, 1, 3 * 2**n, 3 * 2**n)).shape[-1] == 1
        check_discriminator_fits(LossConfig(disc_weight=0.5, disc_layers=n), 3 * 2**n)
        with pytest.raises(UserError):
            check_discriminator_fits(LossConfig(disc_weight=0.5, disc_layers=n), 3 * 2**n - 1)
    check_discriminator_fits(LossConfig(disc_weight=0.0, disc_layers=3), 8)  # no discriminator: nothing to fit
    out = tmp_path / "run"
    assert main(["train-autoencoder", "--config", "tiny", "--data", "fashion-mnist", "--out", str(out),
                 "--set", "loss.disc_weight=0.5", "--set", "loss.disc_layers=3", "--set", "train.progress=false"]) == 2
    err = capsys.readouterr().err
    assert "loss.disc_layers=3 needs images of at least 24 px" in err and "--set loss.disc_layers=2" in err
    assert err.count("\n") == 1 and not out.exists()
