"""Stage-2 math on tiny tensors: targets, loss, min-SNR weights, label dropout, EMA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vqldm.diffusion.config import ObjectiveConfig
from vqldm.latents.guidance import drop_labels
from vqldm.plumbing.ema import EMA, ema_decay_at
from vqldm.diffusion.objective import (
    diffusion_loss,
    make_train_scheduler,
    min_snr_weights,
    sample_noise_and_timesteps,
    snr,
    training_target,
)

PREDICTIONS = ["epsilon", "v_prediction", "sample"]
SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]


def _alpha_sigma(scheduler, t):
    abar = scheduler.alphas_cumprod[t].double()
    return abar.sqrt().view(-1, 1, 1, 1), (1 - abar).sqrt().view(-1, 1, 1, 1)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_training_target_and_zero_loss(prediction, schedule):
    sched = make_train_scheduler(ObjectiveConfig(prediction_type=prediction, beta_schedule=schedule))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 4, 4, generator=g)
    noise, t = sample_noise_and_timesteps(x0, 1000, g)
    target = training_target(prediction, x0, noise, t, sched)
    alpha, sigma = _alpha_sigma(sched, t)
    expected = {"epsilon": noise, "v_prediction": alpha * noise - sigma * x0, "sample": x0}[prediction]
    torch.testing.assert_close(target.double(), expected.double(), atol=1e-5, rtol=1e-5)
    # the forward process is z_t = α x0 + σ ε, as diffusers' add_noise computes it
    torch.testing.assert_close(sched.add_noise(x0, noise, t).double(), alpha * x0 + sigma * noise, atol=1e-5, rtol=1e-5)
    # a model that predicts the target exactly has zero loss, weighted or not
    weights = min_snr_weights(sched, t, prediction, 5.0)
    assert diffusion_loss(target.clone(), target).item() == 0.0
    assert diffusion_loss(target.clone(), target, weights).item() == 0.0
    assert diffusion_loss(target + 0.1, target).item() == pytest.approx(0.01, rel=1e-4)


def test_v_target_recovers_x0_and_noise():
    """v = α ε − σ x0 with z = α x0 + σ ε gives x0 = α z − σ v and ε = σ z + α v (α² + σ² = 1)."""
    sched = make_train_scheduler(ObjectiveConfig(prediction_type="v_prediction"))
    x0, noise = torch.randn(4, 2, 3, 3, dtype=torch.float64), torch.randn(4, 2, 3, 3, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    v = training_target("v_prediction", x0, noise, t, sched)
    z = sched.add_noise(x0, noise, t)
    alpha, sigma = _alpha_sigma(sched, t)
    torch.testing.assert_close(alpha * z - sigma * v, x0)
    torch.testing.assert_close(sigma * z + alpha * v, noise)


def test_min_snr_weights():
    sched = make_train_scheduler(ObjectiveConfig())
    t = torch.arange(0, 1000, 37)
    s = sched.alphas_cumprod[t].double() / (1 - sched.alphas_cumprod[t].double())
    torch.testing.assert_close(snr(sched, t).double(), s, rtol=1e-5, atol=0)
    gamma = 5.0
    clipped = torch.clamp(s, max=gamma)
    torch.testing.assert_close(min_snr_weights(sched, t, "epsilon", gamma).double(), clipped / s, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(min_snr_weights(sched, t, "v_prediction", gamma).double(), clipped / (s + 1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(min_snr_weights(sched, t, "sample", gamma).double(), clipped, rtol=1e-5, atol=1e-6)
    # low noise (SNR > γ) is down-weighted for ε; high noise (SNR < γ) keeps weight 1
    w = min_snr_weights(sched, torch.tensor([0, 999]), "epsilon", gamma)
    assert w[0] < 0.01 and w[1] == pytest.approx(1.0)
    assert min_snr_weights(sched, t, "epsilon", None) is None


def test_label_dropout_rate():
    labels = torch.randint(0, 10, (20_000,), generator=torch.Generator().manual_seed(1))
    out = drop_labels(labels, 0.1, null_class=10, generator=torch.Generator().manual_seed(0))
    dropped = out == 10
    # binomial std at n=20000, p=0.1 is 0.0021; 5 sigma
    assert abs(dropped.float().mean().item() - 0.1) < 0.0106
    assert torch.equal(out[~dropped], labels[~dropped])
    assert torch.equal(drop_labels(labels, 0.0, 10), labels)
    # the same generator seed drops the same labels
    again = drop_labels(labels, 0.1, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_ema_update_math():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9, warmup=False)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert ema.update(model) == pytest.approx(0.9)
    for e, s, p in zip(ema.model.parameters(), start, model.parameters()):
        torch.testing.assert_close(e, 0.9 * s + 0.1 * p)
        assert not e.requires_grad
    # warm-up: d_n = min(decay, (1 + n) / (10 + n))
    assert ema_decay_at(0, 0.9999, True) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.9999, True) == pytest.approx(91 / 100)
    assert ema_decay_at(10**7, 0.9999, True) == pytest.approx(0.9999)
    warm = EMA(model, decay=0.9999, warmup=True)
    before = [p.detach().clone() for p in warm.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    warm.update(model)
    for e, s, p in zip(warm.model.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, 0.1 * s + 0.9 * p)
    # state round trip
    fresh = EMA(nn.Linear(3, 2), decay=0.9999)
    fresh.load_state_dict(warm.state_dict(), warm.num_updates)
    assert fresh.num_updates == 1
    for a, b in zip(fresh.model.parameters(), warm.model.parameters()):
        assert torch.equal(a, b)
