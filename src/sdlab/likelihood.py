"""Log-likelihood pieces shared by the VAE and DDPM evaluations (reported in bits/dim).

Images are 8-bit values mapped to [-1, 1], so each pixel value owns a bin of width 2/255. A
continuous Gaussian decoder is turned into a distribution over those 256 values by integrating
its density over each bin (DDPM section 3.3, eq. (13)); the two edge bins extend to -inf / +inf.
"""

from __future__ import annotations

import math

import torch


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor,
              logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor,
                                        log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log P(x) in nats of 8-bit `x` (in [-1, 1]) under N(mean, e^(2 log_scale)).

    DDPM eq. (13): P(x) = integral over [x - 1/255, x + 1/255] of the Gaussian density,
    with the lower edge at -inf for x = -1 and the upper edge at +inf for x = 1.
    """
    x, mean = x.double(), mean.double()
    inv = torch.exp(-log_scale.double())
    upper = inv * (x - mean + 1.0 / 255)
    lower = inv * (x - mean - 1.0 / 255)
    log_cdf_upper = torch.special.log_ndtr(upper)            # bin [-inf, x + 1/255]
    log_sf_lower = torch.special.log_ndtr(-lower)             # bin [x - 1/255, +inf]
    mass = torch.special.ndtr(upper) - torch.special.ndtr(lower)
    mid = torch.log(mass.clamp_min(1e-300))
    logp = torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, mid))
    return logp.float()


def bits_per_dim(nats: torch.Tensor, dims: int) -> torch.Tensor:
    """Nats per image -> bits per dimension."""
    return nats / (dims * math.log(2.0))
