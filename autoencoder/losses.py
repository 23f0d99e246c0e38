"""Stage-1 losses: reconstruction, LPIPS (optional), PatchGAN discriminator with hinge loss, adaptive weight."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LossConfig:
    reconstruction: Literal["l1", "l2"] = "l1"
    perceptual_weight: float = 0.0  # LPIPS weight; needs `pip install vqldm[lpips]` and its VGG weights
    lpips_weights: str | None = None  # a local folder or file with LPIPS/VGG weights (offline users)
    # Perceptual terms that need no download (and are not an evaluation network): the focal frequency loss
    # (Jiang et al. 2021) and an L1 on image gradients; both push the decoder towards the fine detail an L1
    # on pixels lets it blur away.
    frequency_weight: float = 0.0
    frequency_alpha: float = 1.0  # FFL's focusing exponent (the paper's default)
    gradient_weight: float = 0.0
    disc_weight: float = 0.0  # 0 disables the adversarial term
    disc_start: int = 10_000  # step at which the discriminator loss switches on (Esser et al. 2021)
    disc_layers: int = 3
    disc_channels: int = 64
    disc_lr: float | None = None  # defaults to the autoencoder's lr
    adaptive_weight_max: float = 1e4


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    return F.l1_loss(rec, x) if kind == "l1" else F.mse_loss(rec, x)


def focal_frequency_loss(rec: torch.Tensor, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Focal frequency loss (Jiang et al. 2021): the squared distance between the 2-D spectra of ``rec`` and
    ``x``, each frequency weighted by its own error^alpha (normalised per image and channel to a maximum of
    1, no gradient through the weight), so the frequencies the decoder gets most wrong dominate: once the
    coarse structure is right, those are the fine details an L1 on pixels lets it blur."""
    diff = torch.fft.fft2(rec.float(), norm="ortho") - torch.fft.fft2(x.float(), norm="ortho")
    dist = diff.real**2 + diff.imag**2  # B x C x H x W squared spectral error
    weight = dist.detach().sqrt() ** alpha
    weight = weight / weight.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return (weight * dist).mean()


def gradient_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between the horizontal and vertical finite differences of ``rec`` and ``x`` (edges, not levels)."""
    def grads(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return t[..., :, 1:] - t[..., :, :-1], t[..., 1:, :] - t[..., :-1, :]

    (rx, ry), (xx, xy) = grads(rec.float()), grads(x.float())
    return 0.5 * (F.l1_loss(rx, xx) + F.l1_loss(ry, xy))


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))], halved as in taming."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4) -> torch.Tensor:
    """lambda = ||grad_L nll|| / (||grad_L g_loss|| + 1e-4) at the decoder's last layer L (Esser et al. 2021, eq. 7)."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): a stack of stride-2 4x4 convolutions that scores overlapping patches."""

    def __init__(self, in_channels: int, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                nn.GroupNorm(min(32, channels * mult // 4), channels * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():  # DCGAN init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # B x 1 x h' x w' patch logits


def load_lpips(cfg: LossConfig, log=print) -> nn.Module | None:
    """LPIPS (Zhang et al. 2018) when the ``lpips`` package and its weights are available, else None + warning."""
    if cfg.perceptual_weight <= 0:
        return None
    try:
        import lpips  # type: ignore
    except ImportError:
        log("warning: loss.perceptual_weight > 0 but the lpips package is missing (pip install 'vqldm[lpips]'); training without the perceptual loss")
        return None
    if cfg.lpips_weights:
        os.environ.setdefault("TORCH_HOME", str(cfg.lpips_weights))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(net="vgg", verbose=False)
    except Exception as err:  # offline: the VGG weights cannot be fetched
        log(f"warning: LPIPS weights unavailable ({type(err).__name__}); training without the perceptual loss. Put them in the torch cache or set loss.lpips_weights")
        return None
    model.eval().requires_grad_(False)
    return model


def perceptual_loss(lpips_model: nn.Module, rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if rec.shape[1] == 1:  # LPIPS expects RGB
        rec, x = rec.repeat(1, 3, 1, 1), x.repeat(1, 3, 1, 1)
    return lpips_model(rec, x).mean()
