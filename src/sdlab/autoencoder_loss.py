"""Stable Diffusion's autoencoder loss: why its latents decode to sharp images.

LDM (Rombach et al. 2022, appendix G; CompVis `ldm/modules/losses/contperceptual.py`) trains its
KL-f8 autoencoder with, per batch of B images x and reconstructions x_hat = D(z), z ~ q(z|x):

    rec[p]   = |x_hat - x|[p] + lambda_P * P(x_hat, x)               per pixel p; P a perceptual distance
    L_nll    = (1/B) sum_p (rec[p] / exp(s) + s)                      a Laplace-like NLL with one learned
                                                                      scalar log-scale s (s = 0: plain rec)
    L_kl     = (1/B) sum KL(q(z|x) || N(0, I))                         weighted by 1e-6 only
    L_G      = -mean D_phi(x_hat)                                      the generator's adversarial term
    lambda   = disc_weight * clamp(|grad_w L_nll| / (|grad_w L_G| + 1e-4), 0, 1e4)   (w: the decoder's
                                                                      last layer; detached)
    L_AE     = L_nll + beta L_kl + f(step) lambda L_G                  f = 1 from the discriminator's start
    L_D      = f(step) * (hinge: 1/2 [mean relu(1 - D(x)) + mean relu(1 + D(x_hat))]
                          vanilla: 1/2 [mean softplus(-D(x)) + mean softplus(D(x_hat))])

The adaptive weight (from VQGAN, Esser et al. 2021, eq. (7)) gives the adversarial term a
gradient at the decoder's output layer as large as the reconstruction term's, whatever the two
losses' scales, so one disc_weight works across datasets. The two losses are two optimizers
(`trainer.Update`), updated alternately on every batch. In CompVis's code the log-scale s is not
among the autoencoder optimizer's parameters and so stays at its initial 0; here it is trained
with the autoencoder when `learned_variance` is on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .discriminator import DiscriminatorConfig, PatchGAN
from .randomness import NoiseSource
from .vae import VAE, VAELossConfig, psnr

ADAPTIVE_MAX = 1e4


def nll_loss(rec: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(1/B) sum_p (rec[p] / exp(s) + s): per-pixel reconstruction cost rec (B, C, H, W) under one
    scalar log-scale s. Its minimiser over s is s = log(mean rec), where it equals
    (pixels) * (1 + log mean rec) per image."""
    return (rec / logvar.exp() + logvar).flatten(1).sum(1).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's adversarial term, -mean D(x_hat) (LDM uses it with both disc losses)."""
    return -fake_logits.float().mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Hinge (Lim & Ye 2017) or vanilla non-saturating (Goodfellow et al. 2014) loss of D."""
    real, fake = real_logits.float(), fake_logits.float()
    if kind == "hinge":
        return 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())


def adaptive_weight(nll: torch.Tensor, adversarial: torch.Tensor, last_layer: torch.Tensor,
                    scale: float = 1.0) -> torch.Tensor:
    """scale * clamp(|grad nll| / (|grad adversarial| + 1e-4), 0, 1e4) at `last_layer`, detached:
    the weight that makes the adversarial gradient there as large as the reconstruction's."""
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    return (g_nll.norm() / (g_adv.norm() + 1e-4)).clamp(0, ADAPTIVE_MAX).detach() * scale


class AutoencoderTraining(nn.Module):
    """What Stable Diffusion's loss trains: the VAE, the PatchGAN (None without the adversarial
    term) and the scalar log-scale s. Its state dict holds the VAE under "vae."
    (`trained.autoencoder_weights` reads it back)."""

    def __init__(self, vae: VAE, disc: DiscriminatorConfig):
        super().__init__()
        self.vae = vae
        self.disc = PatchGAN(vae.cfg.in_channels, disc.disc_channels, disc.disc_layers) if disc.adversarial else None
        self.logvar = nn.Parameter(torch.zeros(()))

    def autoencoder(self, learned_variance: bool, decoder_only: bool = False) -> nn.Module:
        """The parameters the autoencoder's optimizer steps: the VAE (or only its decoder side,
        `trained_part`), and s when it is learned."""
        part = trained_part(self.vae, decoder_only)
        return _WithScale(part, self.logvar) if learned_variance else part


def trained_part(vae: VAE, decoder_only: bool) -> nn.Module:
    """The VAE, or for decoder-only fine-tuning its post-quant conv and decoder (the encoder,
    and so every latent, stays as it was: SD's ft-EMA / ft-MSE decoders were made so)."""
    return nn.ModuleList([vae.post_quant_conv, vae.decoder]) if decoder_only else vae


class _WithScale(nn.Module):
    def __init__(self, part: nn.Module, logvar: nn.Parameter):
        super().__init__()
        self.part, self.logvar = part, logvar


def autoencoder_loss(model: AutoencoderTraining, x: torch.Tensor, cfg: VAELossConfig, disc: DiscriminatorConfig,
                     perceptual: nn.Module | None = None, *, generator: torch.Generator | NoiseSource | None = None,
                     step: int | None = None) -> dict:
    """L_AE of the module docstring for images x (B, C, H, W) in [-1, 1]; the adversarial term
    from step disc.disc_start of training (never in validation, `step` None, which has no
    gradients for the adaptive weight). Returns {"loss", "nll", "kl", "recon", "psnr", "logvar",
    and "perceptual", "g_loss", "d_weight" where they apply}; all but loss detached."""
    x_hat, posterior = model.vae(x, generator=generator)
    x_hat = x_hat.float()
    rec = (x_hat - x).abs() if cfg.recon_loss == "l1" else (x_hat - x).pow(2)
    terms = {"recon": rec.flatten(1).sum(1).mean().detach(), "psnr": psnr(x_hat.detach(), x).mean()}
    if perceptual is not None:
        distance = perceptual(x_hat, x)
        rec = rec + cfg.perceptual_weight * distance.view(-1, 1, 1, 1)
        terms["perceptual"] = distance.mean().detach()
    nll = nll_loss(rec, model.logvar)
    kl = posterior.kl().float().mean()
    beta = cfg.kl_weight * (min(1.0, step / cfg.kl_warmup_steps) if step is not None and cfg.kl_warmup_steps else 1.0)
    loss = nll + beta * kl
    if disc.adversarial and step is not None and step >= disc.disc_start:
        g = generator_loss(model.disc(x_hat))
        weight = adaptive_weight(nll, g, model.vae.decoder.conv_out.weight, disc.disc_weight)
        loss = loss + weight * g
        terms.update(g_loss=g.detach(), d_weight=weight)
    return {"loss": loss, "nll": nll.detach(), "kl": kl.detach(), "logvar": model.logvar.detach(), **terms}


def discriminator_update(model: AutoencoderTraining, x: torch.Tensor, disc: DiscriminatorConfig, *,
                         generator: torch.Generator | NoiseSource | None = None) -> dict:
    """L_D on real images x and fresh reconstructions (no gradient into the VAE), as LDM's second
    optimizer step recomputes them. Returns {"loss", "logits_real", "logits_fake"}."""
    with torch.no_grad():
        x_hat = model.vae(x, generator=generator)[0].float()
    real, fake = model.disc(x), model.disc(x_hat)
    return {"loss": discriminator_loss(real, fake, disc.disc_loss),
            "logits_real": real.float().mean().detach(), "logits_fake": fake.float().mean().detach()}
