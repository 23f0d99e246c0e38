"""Stage-1 losses: reconstruction, LPIPS (optional), offline perceptual terms, PatchGAN discriminator (hinge or
non-saturating, optional LeCAM regulariser), adaptive weight."""

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
    disc_start: int = 10_000  # step at which the discriminator starts training (Esser et al. 2021)
    # The generator's adversarial weight then rises linearly from 0 over this many steps: switching it on
    # at full strength against a discriminator that has only just started is what wrecks reconstructions.
    disc_ramp_steps: int = 0
    disc_loss: Literal["hinge", "non_saturating"] = "hinge"
    lecam_weight: float = 0.0  # LeCAM regulariser on the discriminator (Tseng et al. 2021); 0 disables it
    lecam_decay: float = 0.99  # EMA decay of the anchors (mean real and fake logits)
    disc_layers: int = 3
    disc_channels: int = 64
    disc_lr: float | None = None  # defaults to the autoencoder's lr
    adaptive_weight_max: float = 1e4

    def __post_init__(self):
        if self.disc_loss not in ("hinge", "non_saturating"):
            raise ValueError(f"loss.disc_loss must be 'hinge' or 'non_saturating', got {self.disc_loss!r}")
        for name in ("disc_weight", "frequency_weight", "gradient_weight", "perceptual_weight", "lecam_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        for name, low in (("disc_start", 0), ("disc_ramp_steps", 0), ("disc_layers", 1), ("disc_channels", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"loss.{name} must be >= {low}, got {getattr(self, name)}")
        if not 0.0 <= self.lecam_decay < 1.0:
            raise ValueError(f"loss.lecam_decay must be in [0, 1), got {self.lecam_decay}")


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


def discriminator_loss(kind: str, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``hinge`` or ``non_saturating`` (Goodfellow et al. 2014: softplus(-D(x)) + softplus(D(G(z))), halved)."""
    if kind == "hinge":
        return hinge_d_loss(logits_real, logits_fake)
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def generator_loss(kind: str, logits_fake: torch.Tensor) -> torch.Tensor:
    """The decoder's adversarial loss: -D(G(z)) for hinge, softplus(-D(G(z))) for the non-saturating loss."""
    return hinge_g_loss(logits_fake) if kind == "hinge" else F.softplus(-logits_fake).mean()


def decoder_adversarial_loss(disc: nn.Module, rec: torch.Tensor, kind: str) -> torch.Tensor:
    """The decoder's adversarial loss on ``rec``, with the discriminator's weights frozen for this pass: its
    gradient must reach the decoder only. Left on the discriminator's weights it would be added to the
    discriminator's own step and push D(rec) up, against the discriminator's objective."""
    disc.requires_grad_(False)
    try:
        return generator_loss(kind, disc(rec))
    finally:
        disc.requires_grad_(True)


def lecam_penalty(disc: "PatchDiscriminator", logits_real: torch.Tensor, logits_fake: torch.Tensor, decay: float) -> torch.Tensor:
    """LeCAM regulariser (Tseng et al. 2021): keeps the real logits from running above the EMA of the fake ones
    and the fake logits below the EMA of the real ones, which bounds how far the discriminator can pull
    apart on a small dataset. Updates the EMA anchors held in ``disc`` (so they resume with it)."""
    with torch.no_grad():
        new = torch.stack([logits_real.detach().float().mean(), logits_fake.detach().float().mean()])
        disc.lecam_anchors.mul_(decay).add_((1 - decay) * new)
    ema_real, ema_fake = disc.lecam_anchors[0], disc.lecam_anchors[1]
    return F.relu(logits_real.float() - ema_fake).pow(2).mean() + F.relu(ema_real - logits_fake.float()).pow(2).mean()


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4) -> torch.Tensor:
    """lambda = ||grad_L nll|| / (||grad_L g_loss|| + 1e-4) at the decoder's last layer L (Esser et al. 2021, eq. 7)."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


def check_discriminator_fits(cfg: "LossConfig", image_size: int) -> None:
    """A one-line UserError when the PatchGAN has more layers than the images can take: its loss.disc_layers
    strided convolutions halve them, and its last two 4x4 convolutions need 3 pixels left, so the images must
    be at least 3 x 2^disc_layers px."""
    from ..plumbing.errors import UserError

    if cfg.disc_weight <= 0 or image_size >= 3 * 2 ** cfg.disc_layers:
        return
    fits = max((n for n in range(1, cfg.disc_layers) if image_size >= 3 * 2 ** n), default=None)
    fix = f"--set loss.disc_layers={fits}" if fits else "--set loss.disc_weight=0 (no discriminator)"
    raise UserError(f"loss.disc_layers={cfg.disc_layers} needs images of at least {3 * 2 ** cfg.disc_layers} px (each layer "
                    f"halves them) but data.image_size is {image_size}; use {fix}, or larger images")


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
        self.register_buffer("lecam_anchors", torch.zeros(2))  # EMA of the mean real and fake logits (LeCAM)
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
