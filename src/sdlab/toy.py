"""A diffusion model small enough to watch: 2-D data, an MLP denoiser trained in seconds, and
for Gaussian mixtures the exact optimal denoiser to check it against.

    mixture = GaussianMixture.ring()                      # data whose posterior mean is known
    trained = train_toy(ToyConfig(data="ring"))           # the MLP, seconds on a CPU
    samples = sample(trained.model, trained.schedule, (1000, 2), "dpmpp_2m", sample_steps=10)

Exact denoiser of a mixture of isotropic Gaussians:

With x_0 ~ sum_k π_k N(μ_k, s_k^2 I) and x̃ = x_0 + σ ε (x̃ = x_t / sqrt(ᾱ_t), see
`diffusion.solvers`), every component stays Gaussian under noise, so the posterior mean is

    D(x̃, σ) = E[x_0 | x̃] = sum_k r_k(x̃) (μ_k + s_k^2 / (s_k^2 + σ^2) (x̃ - μ_k)),
    r_k(x̃) ∝ π_k N(x̃; μ_k, (s_k^2 + σ^2) I)                   (the component's responsibility)

which is the network a perfectly trained DDPM would be. Samplers can then be watched, and
checked, on data they could not have learned wrongly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import option, require, require_choice
from .diffusion import DiffusionConfig, NoiseSchedule, diffusion_loss
from .unet import timestep_embedding

TOY_DATA = ("ring", "moons", "spiral")


@dataclass(frozen=True)
class GaussianMixture:
    means: torch.Tensor        # (K, D)
    stds: torch.Tensor         # (K,)
    weights: torch.Tensor      # (K,), summing to 1

    @property
    def halves(self) -> torch.Tensor:
        """A class per component (K,): 0 above the x axis, 1 below (the two halves of a ring)."""
        return (self.means[:, 1] < 0).long()

    @classmethod
    def ring(cls, k: int = 8, radius: float = 2.0, std: float = 0.1) -> "GaussianMixture":
        """k equal components evenly spaced on a circle (none on the x axis): the classic 2-D test
        of mode coverage."""
        angles = (torch.arange(k, dtype=torch.float64) + 0.5) * 2 * math.pi / k
        means = radius * torch.stack([angles.cos(), angles.sin()], 1)
        return cls(means, torch.full((k,), std, dtype=torch.float64), torch.full((k,), 1 / k, dtype=torch.float64))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws (n, D) in float64."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * noise

    def posterior_mean(self, x_tilde: torch.Tensor, sigma: torch.Tensor,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
        """D(x̃, σ) above, for x̃ (B, D) and σ (B,); `weights` (B, K) replaces π per row (the
        mixture of one class: π restricted to its components)."""
        var = self.stds[None] ** 2 + sigma[:, None] ** 2                                 # (B, K)
        dist2 = ((x_tilde[:, None] - self.means[None]) ** 2).sum(-1)                      # (B, K)
        dim = self.means.shape[1]
        prior = self.weights[None] if weights is None else weights
        log_r = prior.log() - 0.5 * dist2 / var - 0.5 * dim * var.log()
        r = torch.softmax(log_r, 1)                                                       # (B, K)
        shrink = self.stds[None] ** 2 / var                                               # (B, K)
        per_component = self.means[None] + shrink[..., None] * (x_tilde[:, None] - self.means[None])
        return (r[..., None] * per_component).sum(1)

    def near_modes(self, points: torch.Tensor, within: float = 3.0) -> float:
        """Share of `points` (N, D) within `within` standard deviations of their nearest
        component's mean: how much of a sample lands on the data rather than between modes."""
        distance, nearest = torch.cdist(points.double(), self.means).min(1)
        return (distance < within * self.stds[nearest]).double().mean().item()

    def denoiser(self, schedule: NoiseSchedule, prediction: str = "eps", classes: torch.Tensor | None = None):
        """The optimal network for this data on `schedule`: callable(x_t (B, D), t (B,), labels)
        -> eps, x0 or v, like a trained U-Net.

        classes: the class of each component (K,) makes it class-conditional, like a U-Net
        trained with label dropout: label c gives the optimal denoiser of the components of
        class c, the null label (max(classes) + 1) or labels=None that of the whole mixture."""
        def network(xt: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
            ab = schedule.alpha_bar[t].to(xt.dtype)[:, None]
            sigma = ((1 - ab) / ab).sqrt()[:, 0]
            weights = None
            if classes is not None and labels is not None:
                member = (classes[None] == labels[:, None]) | (labels[:, None] > classes.max())   # (B, K)
                weights = self.weights[None] * member
                weights = weights / weights.sum(1, keepdim=True)
            x0 = self.posterior_mean(xt / ab.sqrt(), sigma, weights).to(xt.dtype)
            if prediction == "x0":
                return x0
            eps = schedule.predict_eps(xt, t, x0)
            return eps if prediction == "eps" else schedule.v_target(x0, t, eps)
        return network


def moons(n: int, generator: torch.Generator | None = None, noise: float = 0.06) -> torch.Tensor:
    """Two interleaved half circles (n, 2), centred and scaled to about [-2, 2]."""
    upper = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
    angle = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
    x = torch.where(upper, angle.cos(), 1 - angle.cos())
    y = torch.where(upper, angle.sin(), 0.5 - angle.sin())
    points = torch.stack([x - 0.5, y - 0.25], 1) * 1.6
    return points + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)


def spiral(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> torch.Tensor:
    """One arm of an Archimedean spiral (n, 2), radius up to 2."""
    u = torch.rand(n, generator=generator, dtype=torch.float64).sqrt()          # uniform along the arc
    angle = 3 * math.pi * u
    points = torch.stack([angle.cos(), angle.sin()], 1) * (2 * u[:, None])
    return points + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)


def draw_toy(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n points (n, 2) of toy data set `name` (one of TOY_DATA), float64."""
    if name == "ring":
        return GaussianMixture.ring().sample(n, generator)
    if name == "moons":
        return moons(n, generator)
    if name == "spiral":
        return spiral(n, generator)
    raise ValueError(f"unknown toy data {name!r}; choose one of {', '.join(TOY_DATA)}")


class ToyDenoiser(nn.Module):
    """An MLP eps-predictor for 2-D points: [x, embed(t)] -> 2, the U-Net's job without the images.

    x_t (B, 2), t (B,) int64, labels ignored -> eps (B, 2)."""

    def __init__(self, hidden: int = 128, layers: int = 3, time_channels: int = 32):
        super().__init__()
        self.time_channels = time_channels
        blocks, width = [], 2 + time_channels
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*blocks, nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        emb = timestep_embedding(t, self.time_channels).to(x.dtype)
        return self.net(torch.cat([x, emb], 1))


@dataclass(frozen=True)
class ToyConfig:
    data: str = option("ring", "2-D data set", choices=TOY_DATA)
    steps: int = option(3000, "training steps (fresh points every step)")
    batch_size: int = option(512, "points per step")
    lr: float = option(2e-3, "AdamW learning rate (cosine decay to 0)")
    hidden: int = option(128, "MLP width")
    num_timesteps: int = option(1000, "diffusion steps T (linear schedule, as the image models)")
    seed: int = option(0, "seed of the data, the noise and the weights")

    def __post_init__(self):
        require_choice(self.data, TOY_DATA, "data")
        for name in ("steps", "batch_size", "hidden"):
            require(getattr(self, name) >= 1, name, f"must be >= 1 (got {getattr(self, name)})")
        require(self.num_timesteps >= 2, "num_timesteps", f"must be >= 2 (got {self.num_timesteps})")
        require(self.lr > 0, "lr", f"must be > 0 (got {self.lr})")


@dataclass
class TrainedToy:
    model: ToyDenoiser
    schedule: NoiseSchedule
    losses: list[float]


def train_toy(cfg: ToyConfig) -> TrainedToy:
    """DDPM's Algorithm 1 on fresh 2-D points every step (there is no dataset to overfit), float32."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    diffusion = DiffusionConfig(num_timesteps=cfg.num_timesteps)
    schedule, model = diffusion.make_schedule(), ToyDenoiser(cfg.hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps)
    losses = []
    for _ in range(cfg.steps):
        x0 = draw_toy(cfg.data, cfg.batch_size, g).float()
        loss = diffusion_loss(model, schedule, x0, diffusion, generator=g)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decay.step()
        losses.append(loss.item())
    return TrainedToy(model.eval().requires_grad_(False), schedule, losses)


@torch.no_grad()
def eps_error(model, mixture: GaussianMixture, schedule: NoiseSchedule, t: int, n: int = 4096,
              seed: int = 0) -> float:
    """Relative mean squared error of `model`'s eps against the exact one at timestep t, over
    x_t ~ q(x_t) of the mixture: E|eps_model - eps_exact|^2 / E|eps_exact|^2. The score is
    -eps / sqrt(1 - ᾱ_t), so this is the score's relative error too."""
    g = torch.Generator().manual_seed(seed)
    x0 = mixture.sample(n, g).float()
    tt = torch.full((n,), t, dtype=torch.long)
    xt = schedule.q_sample(x0, tt, torch.randn(x0.shape, generator=g))
    exact = mixture.denoiser(schedule)(xt, tt)
    return ((model(xt, tt) - exact).pow(2).sum(1).mean() / exact.pow(2).sum(1).mean()).item()
