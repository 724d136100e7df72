"""The variational autoencoder of Stable Diffusion, sized for 32x32 images.

    encode:  x (B, C, H, W) -> q(z | x) = N(mu, diag(sigma^2)),  z: (B, latent_channels, H/f, W/f)
    sample:  z = mu + sigma * eps,  eps ~ N(0, I)          (reparameterization, VAE eq. (10))
    decode:  z -> x_hat (B, C, H, W), the mean of a Gaussian p(x | z)
    loss:    recon(x, x_hat) + beta * KL(q(z | x) || N(0, I))   (negative ELBO, VAE eq. (3))

f = 2 ** len(channel_mults). As in LDM's AutoencoderKL, a 1x1 "quant" conv maps the encoder's
z_channels to the latent_channels of the posterior and a 1x1 "post-quant" conv maps back.

References: Kingma & Welling, Auto-Encoding Variational Bayes (arXiv:1312.6114), App. B for the
KL; Rombach et al., LDM (arXiv:2112.10752) for the spatial latent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import option, require, require_choice, require_finite
from .kernels.groupnorm import GroupNorm
from .layers import Downsample, ResBlock, Upsample
from .randomness import NoiseSource

RECON_LOSSES = ("mse", "l1")
REDUCTIONS = ("sum", "mean")
PERCEPTUAL = ("none", "watson", "classifier", "lpips")


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = option(3, "image channels")
    out_channels: int = option(0, "decoded channels (0: same as in_channels)")
    base_channels: int = option(64, "channels of the first level")
    channel_mults: tuple[int, ...] = option((1, 2), "channel multiplier per level; one downsampling per level")
    num_res_blocks: int = option(1, "residual blocks per level")
    z_channels: int = option(4, "encoder output channels before the 1x1 quant conv")
    latent_channels: int = option(4, "channels of the latent z")

    def __post_init__(self):
        for name in ("in_channels", "base_channels", "z_channels", "latent_channels"):
            require(getattr(self, name) >= 1, name, f"must be >= 1 (got {getattr(self, name)})")
        require(self.out_channels >= 0, "out_channels", f"must be >= 0 (got {self.out_channels})")
        require(self.num_res_blocks >= 0, "num_res_blocks", f"must be >= 0 (got {self.num_res_blocks})")
        require(len(self.channel_mults) >= 1 and all(m >= 1 for m in self.channel_mults),
                "channel_mults", f"must be one or more positive integers (got {self.channel_mults})")

    @property
    def downsampling(self) -> int:
        return 2 ** len(self.channel_mults)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        return (self.latent_channels, image_size // self.downsampling, image_size // self.downsampling)


@dataclass(frozen=True)
class VAELossConfig:
    kl_weight: float = option(0.02, "beta: weight of the KL term (0.02 = ELBO of a Gaussian decoder with sigma 0.1)")
    kl_warmup_steps: int = option(0, "raise beta linearly from 0 over this many steps")
    recon_loss: str = option("mse", "reconstruction term: mse (Gaussian) or l1 (Laplace)", choices=RECON_LOSSES)
    reduction: str = option("sum", "sum: per-image sums over pixels and latent dims; mean: both divided by pixel count",
                            choices=REDUCTIONS)
    perceptual: str = option("none", "perceptual term added to each pixel's reconstruction cost (`perceptual`): none; "
                                     "watson (Watson's model in DFT space, no download); classifier (LPIPS's form in "
                                     "the features of --perceptual-net, a classifier trained here); lpips (LPIPS-VGG, "
                                     "needs the lpips package and VGG16's weights)", choices=PERCEPTUAL)
    perceptual_net: str = option("", "classifier: its sdlab-train-classifier checkpoint (not the one that will score "
                                     "the VAE); lpips: torchvision's vgg16-397923af.pth (default: torch's hub cache)")
    perceptual_weight: float = option(1.0, "weight of the perceptual term (LDM: 1)")
    learned_variance: bool = option(False, "divide the reconstruction cost by a learned scalar exp(s) and add s per "
                                           "pixel (LDM's NLL form, `autoencoder_loss`)")

    def __post_init__(self):
        require_finite(self)
        require(self.kl_weight >= 0, "kl_weight", f"must be >= 0 (got {self.kl_weight})")
        require(self.kl_warmup_steps >= 0, "kl_warmup_steps", f"must be >= 0 (got {self.kl_warmup_steps})")
        require_choice(self.recon_loss, RECON_LOSSES, "recon_loss")
        require_choice(self.reduction, REDUCTIONS, "reduction")
        require_choice(self.perceptual, PERCEPTUAL, "perceptual")
        require(self.perceptual_weight >= 0, "perceptual_weight", f"must be >= 0 (got {self.perceptual_weight})")
        require(self.perceptual != "classifier" or bool(self.perceptual_net), "perceptual_net",
                "--perceptual classifier needs the checkpoint of a classifier to measure in (sdlab-train-classifier; "
                "another seed or width than the one that scores the VAE)")
        require(self.perceptual in ("classifier", "lpips") or not self.perceptual_net, "perceptual_net",
                f"is only read by --perceptual classifier or lpips (got --perceptual {self.perceptual})")

    @property
    def stable_diffusion(self) -> bool:
        """Whether the loss is Stable Diffusion's (`autoencoder_loss`) rather than the ELBO."""
        return self.perceptual != "none" or self.learned_variance


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))), elementwise over (B, C, H, W).

    logvar is clamped to [-30, 20] so exp() stays finite in fp32 and bf16.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | NoiseSource | None = None) -> torch.Tensor:
        """Reparameterization (VAE eq. (10)): z = mu + sigma * eps with eps ~ N(0, I).

        eps must be standard normal: uniform noise (the original repo's bug) has the wrong
        mean and variance, so z would not be distributed as q(z | x).
        """
        eps = NoiseSource.of(generator).normal(self.mean)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, per_element: bool = False) -> torch.Tensor:
        """KL(q || N(0, I)) in nats: per sample, summed over latent dims, shape (B,);
        or unsummed, shape (B, C, H, W), with per_element=True.

        Kingma & Welling App. B: -KL = 1/2 * sum(1 + log sigma^2 - mu^2 - sigma^2).
        """
        mean, logvar = self.mean.float(), self.logvar.float()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
        return kl if per_element else kl.flatten(1).sum(1)


class Encoder(nn.Module):
    """x (B, C, H, W) -> (B, 2 * z_channels, H/f, W/f): mean and log-variance stacked."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch = cfg.base_channels * cfg.channel_mults[0]
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        layers: list[nn.Module] = []
        for mult in cfg.channel_mults:
            out = cfg.base_channels * mult
            layers.append(Downsample(ch, out))          # blocks run at reduced resolution
            layers += [ResBlock(out, out) for _ in range(cfg.num_res_blocks)]
            ch = out
        self.down = nn.Sequential(*layers)
        self.mid = ResBlock(ch, ch)
        self.norm_out = GroupNorm(ch, act=True)
        self.conv_out = nn.Conv2d(ch, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(self.norm_out(h))


class Decoder(nn.Module):
    """z (B, z_channels, H/f, W/f) -> x_hat (B, C, H, W). The last layer is a plain conv."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch = cfg.base_channels * cfg.channel_mults[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, ch, 3, padding=1)
        self.mid = ResBlock(ch, ch)
        layers: list[nn.Module] = []
        for mult in reversed(cfg.channel_mults):
            out = cfg.base_channels * mult
            layers += [ResBlock(ch if i == 0 else out, out) for i in range(cfg.num_res_blocks)]
            ch = out if cfg.num_res_blocks else ch
            layers.append(Upsample(ch, out))
            ch = out
        self.up = nn.Sequential(*layers)
        self.norm_out = GroupNorm(ch, act=True)
        # the image layer: no norm, dropout or activation after it, so x_hat can be any value
        self.conv_out = nn.Conv2d(ch, cfg.out_channels or cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(self.norm_out(h))


class VAE(nn.Module):
    """Encoder -> DiagonalGaussian posterior -> Decoder, with SD's 1x1 quant convs between."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x (B, C, H, W) in [-1, 1] -> q(z | x) over (B, latent_channels, H/f, W/f)."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent_channels, H/f, W/f) -> x_hat (B, C, H, W), roughly in [-1, 1]."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, generator: torch.Generator | NoiseSource | None = None,
                sample: bool = True) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB for images in [-1, 1] (peak-to-peak 2), (B,)."""
    mse = (x_hat.float().clamp(-1, 1) - x.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def vae_loss(model: VAE, x: torch.Tensor, cfg: VAELossConfig, *,
             generator: torch.Generator | NoiseSource | None = None, step: int | None = None) -> dict:
    """Negative ELBO with weight beta on the KL, normalised per image.

    recon = sum over the C*H*W pixels of (x_hat - x)^2 (mse) or |x_hat - x| (l1), per image;
    kl = KL(q(z|x) || N(0, I)) summed over latent dims, per image; both averaged over the batch,
    so beta means the same at every batch size. With reduction="mean" both are divided by
    C*H*W, which rescales the loss (and the effective learning rate) but not the beta trade-off.
    With mse, loss = recon + beta * kl is the negative ELBO (up to a constant and a factor
    1/beta) of a Gaussian decoder with sigma^2 = beta / 2.

    Args:
        x: images (B, C, H, W) in [-1, 1].
        generator: random source of the reparameterization (validation passes a seeded one; the
            trainer a NoiseSource, see `sdlab.randomness`).
        step: the training step, for the beta warm-up; None (validation) uses the full beta.
    Returns:
        {"loss", "recon", "kl", "psnr"}: loss is differentiable, the rest are detached.
    """
    x_hat, posterior = model(x, generator=generator)
    err = (x_hat.float() - x).pow(2) if cfg.recon_loss == "mse" else (x_hat.float() - x).abs()
    recon = err.flatten(1).sum(1).mean()
    kl = posterior.kl().float().mean()
    if cfg.reduction == "mean":
        pixels = math.prod(x.shape[1:])
        recon, kl = recon / pixels, kl / pixels
    beta = cfg.kl_weight
    if step is not None and cfg.kl_warmup_steps:
        beta *= min(1.0, step / cfg.kl_warmup_steps)
    loss = recon + beta * kl
    return {"loss": loss, "recon": recon.detach(), "kl": kl.detach(),
            "psnr": psnr(x_hat.detach(), x).mean()}
