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
