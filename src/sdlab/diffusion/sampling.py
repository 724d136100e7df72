"""Sampling: which timesteps to visit, which sampler steps between them, and the loop.

    images = sample(denoiser, schedule, (16, 3, 32, 32), SamplerConfig(sampler="dpmpp_2m", sample_steps=15))

`SamplerConfig` is the one description of a sampling run: the command-line flags of every entry
point and the training-time sample grids are generated from it, and its choices from the
registry in `solvers`. The timestep grids are all made of trained timesteps:

    uniform    evenly spaced in t (DDIM's default)
    quadratic  t ∝ i^2: more steps at low noise (DDIM section 5)
    karras     σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ, ρ = 7 (Karras et al.
               eq. (5)), each σ_i mapped to the trained timestep of nearest log σ
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..config import option, require, require_choice, require_finite
from .schedule import NoiseSchedule
from .solvers import SAMPLERS, ScheduleDenoiser

VARIANCES = ("beta", "beta_tilde")
SPACINGS = ("auto", "uniform", "quadratic", "karras")
KARRAS_RHO = 7.0


@dataclass(frozen=True)
class SamplerConfig:
    sampler: str = option("ddim", "reverse process: " + "; ".join(f"{k}: {c.help}" for k, c in SAMPLERS.items()),
                          choices=tuple(SAMPLERS))
    sample_steps: int = option(50, "timesteps visited (ddpm always takes all T; heun evaluates the "
                                   "network 2 x steps - 1 times)")
    eta: float = option(0.0, "ddim only: stochasticity (0: deterministic, 1: DDPM-like)")
    spacing: str = option("auto", "timestep grid (auto: uniform for ddim, karras for the others)",
                          choices=SPACINGS)
    variance: str = option("beta", "ddpm only: sigma_t^2 = beta or beta_tilde", choices=VARIANCES)
    num_samples: int = option(64, "images per sample grid")
    clip: bool = option(True, "clamp predicted x0 to [-1, 1] (pixel models; latents are never clamped)")

    def __post_init__(self):
        require_finite(self)
        require_choice(self.sampler, tuple(SAMPLERS), "sampler")
        require_choice(self.spacing, SPACINGS, "spacing")
        require_choice(self.variance, VARIANCES, "variance")
        require(self.sample_steps >= 1, "sample_steps", f"must be >= 1 (got {self.sample_steps})")
        require(self.num_samples >= 1, "num_samples", f"must be >= 1 (got {self.num_samples})")
        require(0 <= self.eta <= 1, "eta", f"must be in [0, 1] (got {self.eta})")
        require(self.eta == 0 or self.sampler == "ddim", "eta",
                f"applies to the ddim sampler only (got {self.eta} with {self.sampler}; euler_a is "
                "the eta = 1 ancestral sampler)")

    @property
    def grid(self) -> str:
        """The timestep spacing this run uses ("auto" resolved by the sampler)."""
        return SAMPLERS[self.sampler].spacing if self.spacing == "auto" else self.spacing

    def timesteps(self, schedule: NoiseSchedule, t_start: int | None = None) -> list[int]:
        """The decreasing trained timesteps this run visits; from `t_start` (img2img, SDEdit):
        t_start, then the grid's points below it."""
        if self.sampler == "ddpm":
            seq = list(range(schedule.num_timesteps - 1, -1, -1))
        else:
            seq = sampling_timesteps(schedule, self.sample_steps, self.grid)
        return seq if t_start is None else [t_start] + [t for t in seq if t < t_start]

    def evaluations(self, schedule: NoiseSchedule, t_start: int | None = None) -> int:
        """Network evaluations (NFE) per image, guidance's doubled batch counted once."""
        return SAMPLERS[self.sampler].evaluations(len(self.timesteps(schedule, t_start)))

    def describe(self, schedule: NoiseSchedule, t_start: int | None = None) -> str:
        """e.g. "dpmpp_2m, 15 karras steps (15 NFE)"; from `t_start`, the steps that run."""
        steps = len(self.timesteps(schedule, t_start))
        grid = "" if self.sampler == "ddpm" else f" {self.grid}"
        start = "" if t_start is None else f" from t = {t_start}"
        return f"{self.sampler}, {steps}{grid} steps{start} ({self.evaluations(schedule, t_start)} NFE)"


def sampler_config(config: SamplerConfig | str | None = None, **options) -> SamplerConfig:
    """A SamplerConfig from a config, a sampler name or nothing (the defaults), with field
    overrides: sampler_config("heun", sample_steps=10) == sampler_config(sampler="heun", sample_steps=10)."""
    if isinstance(config, SamplerConfig):
        return dataclasses.replace(config, **options)
    return SamplerConfig(**({"sampler": config} if config else {}), **options)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = KARRAS_RHO) -> torch.Tensor:
    """Karras et al. eq. (5): n noise levels from sigma_max down to sigma_min (float64)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def sampling_timesteps(schedule: NoiseSchedule, steps: int, spacing: str = "uniform") -> list[int]:
    """Decreasing zero-based trained timesteps from T-1 down to 0 (just T-1 for one step).

    Grids on the trained timesteps can hold fewer than `steps` distinct points (e.g. more
    steps than T, or Karras's dense low-noise end): duplicates are dropped.
    """
    T = schedule.num_timesteps
    if spacing == "uniform":
        grid = torch.linspace(T - 1, 0, steps)
    elif spacing == "quadratic":
        grid = torch.linspace((T - 1) ** 0.5, 0, steps) ** 2
    elif spacing == "karras":
        alpha_bar = torch.tensor(schedule.alpha_bar_f64, dtype=torch.float64)
        log_sigmas = 0.5 * torch.log((1 - alpha_bar) / alpha_bar)
        wanted = karras_sigmas(log_sigmas[0].exp().item(), log_sigmas[-1].exp().item(), steps).log()
        grid = (wanted[:, None] - log_sigmas[None, :]).abs().argmin(1).double()
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS[1:])}")
    return sorted({int(round(v)) for v in grid.tolist()}, reverse=True)


@dataclass
class Trajectory:
    """Intermediate states of one sampling run: x_t and the predicted x_0 at each step."""

    timesteps: list[int] = field(default_factory=list)
    xt: list[torch.Tensor] = field(default_factory=list)
    x0: list[torch.Tensor] = field(default_factory=list)


@torch.no_grad()
def sample(denoiser, schedule: NoiseSchedule, shape: tuple[int, ...], config: SamplerConfig | str | None = None, *,
           prediction: str = "eps", labels: torch.Tensor | None = None,
           generator: torch.Generator | None = None, device: torch.device | str = "cpu",
           memory_format: torch.memory_format = torch.contiguous_format, x_T: torch.Tensor | None = None,
           t_start: int | None = None, after_step=None, trajectory: Trajectory | None = None,
           progress: bool = False, **options) -> torch.Tensor:
    """Draw samples by running a reverse process from x_T ~ N(0, I), or from a given x_t.

    Args:
        denoiser: callable(x_t, t, labels) -> output of type `prediction`.
        shape: (B, C, H, W) of the samples.
        config: a SamplerConfig or a sampler name; `options` override its fields
            (sample(..., "ddim", sample_steps=20, eta=0.5)).
        x_T: the starting noise (default: drawn from `generator`).
        t_start: x_T is x at this trained timestep instead of pure noise (SDEdit): the grid's
            points above it are skipped and the run starts there.
        after_step: optional callable(x, t_next) -> x applied after every step (inpainting
            puts the known region back there); t_next = -1 after the last step.
        trajectory: if given, filled with x_t and predicted x_0 at every step.
    Returns:
        x_0 samples (B, C, H, W), in [-1, 1] when config.clip is on.
    """
    cfg = sampler_config(config, **options)
    solver = SAMPLERS[cfg.sampler](cfg.eta, cfg.variance)
    net = ScheduleDenoiser(denoiser, schedule, prediction, cfg.clip, labels)
    seq = cfg.timesteps(schedule, t_start)
    x = torch.randn(shape, generator=generator, device=device) if x_T is None else x_T
    x = x.contiguous(memory_format=memory_format)

    def noise(like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=generator, device=like.device,
                           dtype=like.dtype).contiguous(memory_format=memory_format)

    for i, t in enumerate(tqdm(seq, desc=cfg.sampler, disable=not progress, leave=False)):
        t_next = seq[i + 1] if i + 1 < len(seq) else -1
        x_next, x0 = solver.step(net, x, t, t_next, noise)
        if after_step is not None:
            x_next = after_step(x_next, t_next)
        if trajectory is not None:
            trajectory.timesteps.append(t)
            trajectory.xt.append(x.cpu())
            trajectory.x0.append(x0.cpu())
        x = x_next
    return x
