"""The forward (noising) process of DDPM: beta schedules and the closed forms built on them.

Notation (Ho et al., DDPM, arXiv:2006.11239): beta_t is the noise added at step t,
alpha_t = 1 - beta_t, and alpha_bar_t (ᾱ_t, "alphas_cumprod") = prod_{s<=t} alpha_s.
Timesteps are zero-based: t is an int64 tensor (B,) with values in [0, T-1]; index 0 is the
paper's t = 1, the first noising step, and alpha_bar_prev at index 0 is 1 (clean data).

Every series is computed in float64 and stored as float32 buffers, so `.to(device)` moves them.
Cosine schedule: Nichol & Dhariwal, improved DDPM (arXiv:2102.09672), eq. (17).
v-parameterisation: Salimans & Ho, progressive distillation (arXiv:2202.00512), section 4.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SCHEDULES = ("linear", "scaled_linear", "cosine")


def make_betas(kind: str, num_timesteps: int, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> torch.Tensor:
    """beta_t for t = 0..T-1 in float64.

    linear: evenly spaced from beta_start to beta_end (DDPM: 1e-4 to 0.02 with T = 1000).
    scaled_linear: sqrt(beta) evenly spaced (Stable Diffusion v1: beta from 0.00085 to 0.012).
    cosine: ᾱ(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), s = 0.008
            (improved DDPM eq. (17)); beta_t = 1 - ᾱ_t / ᾱ_{t-1}, clipped at 0.999.
    """
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    if kind == "cosine":
        s = 0.008
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


def _at(series: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """series[t] shaped (B, 1, 1, ...) to broadcast against a (B, ...) tensor of `ndim` dims."""
    return series[t].reshape(-1, *([1] * (ndim - 1)))


class NoiseSchedule(nn.Module):
    """Precomputed series for q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0) and inversions."""

    def __init__(self, betas: torch.Tensor):
        super().__init__()
        betas = betas.double()
        alphas = 1 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        # DDPM eq. (7): beta_tilde_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) * beta_t
        posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        series = {
            "betas": betas,
            "alphas": alphas,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": alpha_bar_prev,
            "sqrt_alpha_bar": alpha_bar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1 - alpha_bar).sqrt(),
            "sqrt_recip_alpha_bar": (1 / alpha_bar).sqrt(),
            "sqrt_recipm1_alpha_bar": (1 / alpha_bar - 1).sqrt(),
            "posterior_variance": posterior_variance,
            # beta_tilde_0 = 0, so the log takes beta_tilde_1 at index 0 (finite everywhere)
            "posterior_log_variance_clipped": torch.log(
                torch.cat([posterior_variance[1:2], posterior_variance[1:]])),
            # DDPM eq. (7): mu_tilde = coef1 * x_0 + coef2 * x_t
            "posterior_mean_coef1": betas * alpha_bar_prev.sqrt() / (1 - alpha_bar),
            "posterior_mean_coef2": (1 - alpha_bar_prev) * alphas.sqrt() / (1 - alpha_bar),
        }
        for name, value in series.items():
            self.register_buffer(name, value.float(), persistent=False)
        self.num_timesteps = len(betas)
        # ᾱ_t as Python floats (float64) for samplers' per-step scalars: 1 - ᾱ_t / ᾱ_{t-1} = β_t
        # cancels catastrophically in float32 (β_t ~ 1e-4 leaves ~3 significant digits)
        self.alpha_bar_f64 = alpha_bar.tolist()

    @classmethod
    def create(cls, kind: str = "linear", num_timesteps: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> "NoiseSchedule":
        return cls(make_betas(kind, num_timesteps, beta_start, beta_end))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Sample x_t given x_0 in one step.

        DDPM eq. (4): q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I), so
        x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) eps with eps ~ N(0, I).
        """
        return (_at(self.sqrt_alpha_bar, t, x0.ndim) * x0
                + _at(self.sqrt_one_minus_alpha_bar, t, x0.ndim) * eps)

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0), DDPM eqs. (6)-(7)."""
        mean = (_at(self.posterior_mean_coef1, t, xt.ndim) * x0
                + _at(self.posterior_mean_coef2, t, xt.ndim) * xt)
        return (mean, _at(self.posterior_variance, t, xt.ndim),
                _at(self.posterior_log_variance_clipped, t, xt.ndim))

    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert eq. (4) for x_0 given the noise (DDPM eq. (15)):
        x_0 = (x_t - sqrt(1 - ᾱ_t) eps) / sqrt(ᾱ_t)."""
        return (_at(self.sqrt_recip_alpha_bar, t, xt.ndim) * xt
                - _at(self.sqrt_recipm1_alpha_bar, t, xt.ndim) * eps)

    def predict_eps(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The noise that takes x_0 to x_t: eps = (x_t - sqrt(ᾱ_t) x_0) / sqrt(1 - ᾱ_t)."""
        return ((_at(self.sqrt_recip_alpha_bar, t, xt.ndim) * xt - x0)
                / _at(self.sqrt_recipm1_alpha_bar, t, xt.ndim))

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(ᾱ_t) eps - sqrt(1 - ᾱ_t) x_0 (Salimans & Ho, section 4)."""
        return (_at(self.sqrt_alpha_bar, t, x0.ndim) * eps
                - _at(self.sqrt_one_minus_alpha_bar, t, x0.ndim) * x0)

    def x0_from_v(self, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(ᾱ_t) x_t - sqrt(1 - ᾱ_t) v."""
        return (_at(self.sqrt_alpha_bar, t, xt.ndim) * xt
                - _at(self.sqrt_one_minus_alpha_bar, t, xt.ndim) * v)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t), shape (B,)."""
        return self.alpha_bar[t] / (1 - self.alpha_bar[t])
