"""The samplers: one class per reverse process, each a step rule over a grid of trained timesteps.

Two views of the same schedule (zero-based t; t = -1 means "clean data", ᾱ = 1):

    DDPM's  x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) eps                         (DDPM eq. (4))
    EDM's   x̃ = x_t / sqrt(ᾱ_t) = x_0 + σ_t eps,  σ_t = sqrt((1 - ᾱ_t) / ᾱ_t)   (Karras et al. eq. (1))

In the second view the probability-flow ODE (Song et al., arXiv:2011.13456, eq. (13)) of a
variance-preserving model is simply

    dx̃/dσ = eps(x̃, σ) = (x̃ - D(x̃, σ)) / σ                                   (EDM eq. (3), s(t) = 1)

where D is the denoiser's x_0 prediction. DDIM with eta = 0 is Euler's method on this ODE
(Karras et al. section 3), Heun is its second-order trapezoidal correction (EDM Algorithm 1), and
DPM-Solver++ integrates its linear part exactly in λ = -log σ (Lu et al., arXiv:2211.01095).
The stochastic samplers add fresh noise each step: DDPM's ancestral step (Ho et al. Algorithm 2),
DDIM with eta > 0, and Euler-ancestral.

Every solver sees the network through `ScheduleDenoiser`, which evaluates it only at trained
timesteps, so nothing here needs a model that accepts fractional t. State passed between steps
is always x_t in DDPM's scaling; the σ-view solvers convert at each step.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .objective import model_outputs
from .schedule import NoiseSchedule


class ScheduleDenoiser:
    """The network as a solver sees it: (eps, x0) at a trained timestep, plus σ_t and sqrt(ᾱ_t).

    Args:
        fn: callable(x_t, t, labels) -> network output of type `prediction`.
        clip: clamp each predicted x0 to [-1, 1] (eps recomputed to match, `model_outputs`).
    """

    def __init__(self, fn, schedule: NoiseSchedule, prediction: str, clip: bool, labels=None):
        self.fn, self.schedule, self.prediction, self.clip, self.labels = fn, schedule, prediction, clip, labels

    def __call__(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) predicted at trained timestep t for x_t (B, C, H, W)."""
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        return model_outputs(self.fn(x, tt, self.labels), self.schedule, x, tt, self.prediction, self.clip)

    def alpha_bar(self, t: int) -> float:
        return 1.0 if t < 0 else self.schedule.alpha_bar_f64[t]     # float64, and no device sync

    def sigma(self, t: int) -> float:
        """σ_t = sqrt((1 - ᾱ_t) / ᾱ_t), the noise level of x̃ (0 for t = -1)."""
        a = self.alpha_bar(t)
        return math.sqrt((1 - a) / a)

    def scale(self, t: int) -> float:
        """sqrt(ᾱ_t): x_t = scale * x̃."""
        return math.sqrt(self.alpha_bar(t))


Noise = Callable[[torch.Tensor], torch.Tensor]     # like(x) -> N(0, I) draw of x's shape


class Sampler:
    """One reverse process. `step` takes x_t at grid point t to x at the next grid point t_next
    (-1 at the end) and returns it with the x0 predicted at t. A sampler may keep state between
    the steps of one run (multistep methods); `sample` makes a fresh one per run."""

    name = ""
    help = ""
    spacing = "uniform"       # the timestep grid it uses when the config says "auto"
    order = 1                 # global order of accuracy as an ODE solver (checked by the tests)

    def __init__(self, eta: float = 0.0, variance: str = "beta"):
        self.eta, self.variance = eta, variance

    @classmethod
    def evaluations(cls, steps: int) -> int:
        """Network evaluations (NFE) for a grid of `steps` timesteps."""
        return steps

    @classmethod
    def steps_for(cls, nfe: int) -> int:
        """The largest grid whose evaluations fit in `nfe` (to compare samplers at equal cost)."""
        return nfe

    def step(self, net: ScheduleDenoiser, x: torch.Tensor, t: int, t_next: int,
             noise: Noise) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


SAMPLERS: dict[str, type[Sampler]] = {}


def register(cls: type[Sampler]) -> type[Sampler]:
    SAMPLERS[cls.name] = cls
    return cls


@register
class DDPM(Sampler):
    """DDPM's ancestral sampler: all T steps, x_{t-1} ~ p(x_{t-1} | x_t) (Ho et al. Algorithm 2)."""

    name, help = "ddpm", "ancestral DDPM over all T steps (Ho et al. Algorithm 2)"

    def step(self, net, x, t, t_next, noise):
        _, x0 = net(x, t)
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        # posterior mean mu_tilde(x_t, x0) of eq. (7); sigma_t^2 = beta_t or beta_tilde_t (section 3.2)
        mean, var_tilde, _ = net.schedule.q_posterior(x0, x, tt)
        var = var_tilde if self.variance == "beta_tilde" else net.schedule.betas[t]
        return (mean + var.sqrt() * noise(x) if t > 0 else mean), x0


@register
class DDIM(Sampler):
    """DDIM (Song et al., arXiv:2010.02502) on any grid; eta = 0 deterministic, eta = 1 ancestral."""

    name, help = "ddim", "DDIM, eqs. (12) and (16); --eta 0: deterministic, 1: DDPM-like"

    def step(self, net, x, t, t_next, noise):
        eps, x0 = net(x, t)
        a_t, a_prev = net.alpha_bar(t), net.alpha_bar(t_next)
        # DDIM eq. (16): sigma = eta sqrt((1 - ᾱ_prev) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_prev)
        sigma = self.eta * math.sqrt(max((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev), 0.0))
        # DDIM eq. (12): x_prev = sqrt(ᾱ_prev) x0 + sqrt(1 - ᾱ_prev - sigma^2) eps + sigma z
        out = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        return (out + sigma * noise(x) if sigma > 0 else out), x0


class SigmaSampler(Sampler):
    """A sampler that steps x̃ = x_t / sqrt(ᾱ_t) in σ. Every one of them ends the same way: the
    last step, to σ = 0, lands on the predicted x0 (x̃ + (0 - σ) eps = x0), returned exactly."""

    spacing = "karras"

    def step(self, net, x, t, t_next, noise):
        eps, x0 = net(x, t)
        if t_next < 0:
            return x0, x0
        x_next = self.move(net, x / net.scale(t), eps, x0, t, t_next, noise)
        return x_next * net.scale(t_next), x0

    def move(self, net: ScheduleDenoiser, x_tilde: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor,
             t: int, t_next: int, noise: Noise) -> torch.Tensor:
        """x̃ at σ_{t_next} from x̃ at σ_t, given the network's (eps, x0) there (t_next >= 0)."""
        raise NotImplementedError


@register
class Euler(SigmaSampler):
    """Euler's method on the probability-flow ODE in σ (first order; equal to DDIM with eta = 0)."""

    name, help = "euler", "Euler on the probability-flow ODE, Karras sigmas (EDM)"

    def move(self, net, x_tilde, eps, x0, t, t_next, noise):
        # EDM eq. (3) with one Euler step: x̃_next = x̃ + (σ_next - σ) eps
        return x_tilde + (net.sigma(t_next) - net.sigma(t)) * eps


@register
class EulerAncestral(SigmaSampler):
    """Euler step down to σ_down, then fresh noise of size σ_up, so the marginal at σ_next is right.

    σ_up^2 = σ_next^2 (σ^2 - σ_next^2) / σ^2 and σ_down^2 = σ_next^2 - σ_up^2: the same split
    as DDIM's eq. (16) with eta = 1 written in x̃, so the two samplers coincide on one grid.
    """

    name, help = "euler_a", "Euler-ancestral (eta = 1), Karras sigmas"

    def move(self, net, x_tilde, eps, x0, t, t_next, noise):
        s, s_next = net.sigma(t), net.sigma(t_next)
        s_up = s_next * math.sqrt(max(s**2 - s_next**2, 0.0)) / s
        s_down = math.sqrt(max(s_next**2 - s_up**2, 0.0))
        x_tilde = x_tilde + (s_down - s) * eps
        return x_tilde + s_up * noise(x_tilde) if s_up > 0 else x_tilde


@register
class Heun(SigmaSampler):
    """Heun's method (EDM Algorithm 1 without churn): an Euler step, then the trapezoid of the
    slopes at both ends; the last step (to σ = 0) is plain Euler. Second order, 2n - 1 NFE."""

    name, help, order = "heun", "Heun, 2nd order, 2 NFE per step (EDM Algorithm 1)", 2

    @classmethod
    def evaluations(cls, steps):
        return 2 * steps - 1

    @classmethod
    def steps_for(cls, nfe):
        return (nfe + 1) // 2

    def move(self, net, x_tilde, eps, x0, t, t_next, noise):
        ds = net.sigma(t_next) - net.sigma(t)
        x_euler = x_tilde + ds * eps                                       # EDM Alg. 1 line 5
        eps_next, _ = net(x_euler * net.scale(t_next), t_next)            # slope at the far end
        return x_tilde + ds * 0.5 * (eps + eps_next)                       # EDM Alg. 1 line 8


@register
class DPMSolverPP2M(SigmaSampler):
    """DPM-Solver++(2M) (Lu et al., arXiv:2211.01095, Algorithm 2): data prediction, multistep.

    With λ = -log σ and h = λ_next - λ, the exact solution of the ODE's linear part gives
        x̃_next = (σ_next / σ) x̃ - (e^{-h} - 1) D        (DPM-Solver++ first order, = DDIM)
    and the second-order multistep estimate replaces D by
        D' = (1 + 1 / (2r)) D_i - 1 / (2r) D_{i-1},   r = h_{i-1} / h_i.
    The first step has no history and the last (to σ = 0, h = inf) returns D: both first order.
    """

    name, help, order = "dpmpp_2m", "DPM-Solver++(2M), 2nd order multistep, Karras sigmas", 2

    def __init__(self, eta: float = 0.0, variance: str = "beta"):
        super().__init__(eta, variance)
        self.previous = None       # (x0, h) of the step before

    def move(self, net, x_tilde, eps, x0, t, t_next, noise):
        s, s_next = net.sigma(t), net.sigma(t_next)
        h = math.log(s / s_next)
        denoised = x0
        if self.previous is not None:
            x0_before, h_before = self.previous
            r = h_before / h
            denoised = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_before
        self.previous = (x0, h)
        return (s_next / s) * x_tilde - math.expm1(-h) * denoised
