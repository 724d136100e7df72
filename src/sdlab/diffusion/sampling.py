"""Reverse processes: ancestral DDPM sampling and DDIM, for any denoiser callable.

    denoiser(x_t, t, labels) -> network output (eps, v or x0, per `prediction`)

DDPM: Ho et al. (arXiv:2006.11239), Algorithm 2. DDIM: Song et al. (arXiv:2010.02502),
eqs. (12) and (16). Timesteps are zero-based (see `schedule`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..config import option, require, require_choice, require_finite
from .objective import model_outputs
from .schedule import NoiseSchedule

SAMPLERS = ("ddpm", "ddim")
VARIANCES = ("beta", "beta_tilde")
SPACINGS = ("uniform", "quadratic")


@dataclass(frozen=True)
class SamplerConfig:
    sampler: str = option("ddim", "reverse process for sample grids", choices=SAMPLERS)
    sample_steps: int = option(50, "DDIM steps (DDPM always takes all T)")
    eta: float = option(0.0, "DDIM stochasticity (0: deterministic, 1: DDPM-like)")
    spacing: str = option("uniform", "DDIM timestep spacing", choices=SPACINGS)
    variance: str = option("beta", "DDPM sigma_t^2: beta or beta_tilde", choices=VARIANCES)
    num_samples: int = option(64, "images per sample grid")
    clip: bool = option(True, "clamp predicted x0 to [-1, 1]")

    def __post_init__(self):
        require_finite(self)
        require_choice(self.sampler, SAMPLERS, "sampler")
        require_choice(self.spacing, SPACINGS, "spacing")
        require_choice(self.variance, VARIANCES, "variance")
        require(self.sample_steps >= 1, "sample_steps", f"must be >= 1 (got {self.sample_steps})")
        require(self.num_samples >= 1, "num_samples", f"must be >= 1 (got {self.num_samples})")
        require(0 <= self.eta <= 1, "eta", f"must be in [0, 1] (got {self.eta})")

    def kwargs(self) -> dict:
        """Keyword arguments of `sample` for this config."""
        return {"sampler": self.sampler, "steps": self.sample_steps, "eta": self.eta,
                "spacing": self.spacing, "variance": self.variance, "clip": self.clip}


@dataclass
class Trajectory:
    """Intermediate states of one sampling run: x_t and the predicted x_0 at each step."""

    timesteps: list[int] = field(default_factory=list)
    xt: list[torch.Tensor] = field(default_factory=list)
    x0: list[torch.Tensor] = field(default_factory=list)


def ddpm_step_stats(schedule: NoiseSchedule, x0: torch.Tensor, xt: torch.Tensor,
                    t: torch.Tensor, variance: str = "beta") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of p(x_{t-1} | x_t) given the predicted x_0.

    The mean is the posterior mean mu_tilde(x_t, x_0) of eq. (7); with x_0 from eq. (15) it equals
    Algorithm 2's 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - ᾱ_t) eps). sigma_t^2 is beta_t or
    beta_tilde_t (section 3.2); no noise is added at the last step (t index 0).
    """
    mean, var_tilde, _ = schedule.q_posterior(x0, xt, t)
    var = var_tilde if variance == "beta_tilde" else schedule.betas[t].reshape(-1, 1, 1, 1)
    std = torch.where(t.reshape(-1, 1, 1, 1) > 0, var.sqrt(), torch.zeros_like(var))
    return mean, std


def ddim_step_stats(schedule: NoiseSchedule, eps: torch.Tensor, x0: torch.Tensor,
                    t: torch.Tensor, t_prev: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of DDIM's x_{t_prev} given (eps, x0) at t (t_prev = -1: x_0).

    DDIM eq. (16): sigma = eta * sqrt((1 - ᾱ_prev) / (1 - ᾱ_t)) * sqrt(1 - ᾱ_t / ᾱ_prev)
    DDIM eq. (12): x_prev = sqrt(ᾱ_prev) x0 + sqrt(1 - ᾱ_prev - sigma^2) eps + sigma z
    """
    shape = (-1, 1, 1, 1)
    a_t = schedule.alpha_bar[t].reshape(shape)
    a_prev = torch.where(t_prev >= 0, schedule.alpha_bar[t_prev.clamp(min=0)],
                         torch.ones_like(t_prev, dtype=a_t.dtype)).reshape(shape)
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
    return mean, sigma


def ddim_timesteps(num_timesteps: int, steps: int, spacing: str = "uniform") -> list[int]:
    """Decreasing zero-based timesteps visited by DDIM, always ending at 0 and starting near T-1."""
    if spacing == "uniform":
        grid = torch.linspace(0, num_timesteps - 1, steps)
    elif spacing == "quadratic":
        grid = torch.linspace(0, (num_timesteps - 1) ** 0.5, steps) ** 2
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    return sorted({int(round(v)) for v in grid.tolist()}, reverse=True)


@torch.no_grad()
def sample(denoiser, schedule: NoiseSchedule, shape: tuple[int, ...], *, sampler: str = "ddpm",
           steps: int | None = None, eta: float = 0.0, spacing: str = "uniform",
           variance: str = "beta", prediction: str = "eps", clip: bool = True,
           labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
           device: torch.device | str = "cpu", trajectory: Trajectory | None = None,
           progress: bool = False) -> torch.Tensor:
    """Draw samples by running the reverse process from x_T ~ N(0, I).

    Args:
        denoiser: callable(x_t, t, labels) -> output of type `prediction`.
        shape: (B, C, H, W) of the samples.
        sampler: "ddpm" (all T steps, Algorithm 2) or "ddim" (`steps` steps, eta).
        clip: clamp each predicted x_0 to [-1, 1], the range the data was scaled to.
        trajectory: if given, filled with x_t and predicted x_0 at every step.
    Returns:
        x_0 samples (B, C, H, W), in [-1, 1] when clip is on.
    """
    T = schedule.num_timesteps
    if sampler == "ddpm":
        seq = list(range(T - 1, -1, -1))
    elif sampler == "ddim":
        seq = ddim_timesteps(T, steps or 50, spacing)
    else:
        raise ValueError(f"unknown sampler {sampler!r}; choose ddpm or ddim")
    x = torch.randn(shape, generator=generator, device=device)
    b = shape[0]
    for i, index in enumerate(tqdm(seq, desc=sampler, disable=not progress, leave=False)):
        t = torch.full((b,), index, device=device, dtype=torch.long)
        eps, x0 = model_outputs(denoiser(x, t, labels), schedule, x, t, prediction, clip)
        if trajectory is not None:
            trajectory.timesteps.append(index)
            trajectory.xt.append(x.cpu())
            trajectory.x0.append(x0.cpu())
        if sampler == "ddpm":
            mean, std = ddpm_step_stats(schedule, x0, x, t, variance)
        else:
            t_prev = torch.full_like(t, seq[i + 1] if i + 1 < len(seq) else -1)
            mean, std = ddim_step_stats(schedule, eps, x0, t, t_prev, eta)
        noise = torch.randn(shape, generator=generator, device=device)
        x = mean + std * noise
    return x
