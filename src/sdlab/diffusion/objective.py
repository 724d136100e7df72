"""What the denoiser is trained on and how well it models the data.

    diffusion_loss   DDPM Algorithm 1 with L_simple (eq. (14)); eps, v or x0 targets;
                     optional min-SNR-gamma weighting (Hang et al., arXiv:2303.09556)
    model_outputs    turn a network output into (eps, x0) for any prediction type
    nll_bits_per_dim the variational bound L_0 + sum L_{t-1} + L_T in bits/dim (DDPM eq. (5))

The denoiser is any callable `model(x_t, t, labels) -> (B, C, H, W)`; nothing here imports a
network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import option, require, require_choice, require_finite
from ..likelihood import bits_per_dim, discretized_gaussian_log_likelihood, normal_kl
from ..randomness import NoiseSource
from .schedule import SCHEDULES, NoiseSchedule

PREDICTIONS = ("eps", "v", "x0")


@dataclass(frozen=True)
class DiffusionConfig:
    num_timesteps: int = option(1000, "diffusion steps T")
    schedule: str = option("linear", "beta schedule", choices=SCHEDULES)
    beta_start: float = option(1e-4, "first beta of the linear and scaled_linear schedules")
    beta_end: float = option(0.02, "last beta of the linear and scaled_linear schedules")
    prediction: str = option("eps", "what the U-Net predicts", choices=PREDICTIONS)
    min_snr_gamma: float = option(0.0, "min-SNR-gamma loss weighting (0 disables; 5 is typical)")

    def __post_init__(self):
        require_finite(self)
        require(self.num_timesteps >= 2, "num_timesteps", f"must be >= 2 (got {self.num_timesteps})")
        require(0 < self.beta_start < self.beta_end < 1, "beta_start",
                f"need 0 < beta_start < beta_end < 1 (got {self.beta_start}, {self.beta_end})")
        require_choice(self.schedule, SCHEDULES, "schedule")
        require_choice(self.prediction, PREDICTIONS, "prediction")
        require(self.min_snr_gamma >= 0, "min_snr_gamma", f"must be >= 0 (got {self.min_snr_gamma})")

    def make_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.create(self.schedule, self.num_timesteps, self.beta_start, self.beta_end)


def diffusion_loss(model, schedule: NoiseSchedule, x0: torch.Tensor, cfg: DiffusionConfig,
                   labels: torch.Tensor | None = None,
                   generator: torch.Generator | NoiseSource | None = None,
                   t: torch.Tensor | None = None) -> dict:
    """DDPM Algorithm 1: t ~ Uniform{0..T-1}, eps ~ N(0, I), regress the target at x_t.

    L_simple (eq. (14)) = E || target - model(x_t, t) ||^2, the mean over pixels per image.
    With min-SNR-gamma the per-image error is weighted so the effective x0-space weight is
    min(SNR_t, gamma).

    Args:
        x0: clean images (B, C, H, W) in [-1, 1].
        generator: noise and timestep source (validation passes a seeded one; the trainer a
            NoiseSource, see `sdlab.randomness`).
        t: optional fixed timesteps (B,), e.g. for loss-per-timestep figures.
    Returns:
        {"loss": weighted mean, "mse": unweighted L_simple (detached)}.
    """
    b, draw = x0.shape[0], NoiseSource.of(generator)
    if t is None:
        t = draw.integers(schedule.num_timesteps, b, x0.device)
    eps = draw.normal(x0)          # in x0's memory format
    xt = schedule.q_sample(x0, t, eps)
    target = {"eps": eps, "v": schedule.v_target(x0, t, eps), "x0": x0}[cfg.prediction]
    per_image = (model(xt, t, labels).float() - target).pow(2).flatten(1).mean(1)    # (B,)
    mse = per_image.mean()
    if cfg.min_snr_gamma:
        snr = schedule.snr(t)
        clipped = snr.clamp(max=cfg.min_snr_gamma)
        weight = {"eps": clipped / snr, "v": clipped / (snr + 1), "x0": clipped}[cfg.prediction]
        loss = (weight * per_image).mean()
    else:
        loss = mse
    return {"loss": loss, "mse": mse.detach()}


def model_outputs(output: torch.Tensor, schedule: NoiseSchedule, xt: torch.Tensor,
                  t: torch.Tensor, prediction: str, clip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, x0) implied by a network output; with `clip`, x0 is clamped to [-1, 1] (the data
    range) and eps recomputed from the clamped x0 so the two stay consistent. The output is
    cast to x_t's dtype (autocast's bf16 back to fp32; fp64 in the solver-order tests)."""
    output = output.to(xt.dtype)
    if prediction == "eps":
        eps, x0 = output, schedule.predict_x0(xt, t, output)
    elif prediction == "v":
        x0 = schedule.x0_from_v(xt, t, output)
        eps = schedule.predict_eps(xt, t, x0)
    else:
        x0 = output
        eps = schedule.predict_eps(xt, t, x0)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = schedule.predict_eps(xt, t, x0)
    return eps, x0


@torch.no_grad()
def nll_bits_per_dim(model, schedule: NoiseSchedule, x0: torch.Tensor, prediction: str = "eps",
                     timesteps: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> dict:
    """The variational bound on -log p(x_0) in bits/dim (DDPM eq. (5)), per image.

    L_T   = KL(q(x_T | x_0) || N(0, I))                       (prior term)
    L_t-1 = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))      for t >= 1 (zero-based index >= 1)
    L_0   = -log p(x_0 | x_1), discretized Gaussian decoder    (eq. (13); zero-based index 0)
    p(x_{t-1} | x_t) = N(mu_theta, beta_tilde_t) with mu_theta from the predicted x_0 (unclipped).

    Args:
        x0: images (B, C, H, W) on the 256-level grid in [-1, 1].
        timesteps: zero-based indices in [1, T-1] whose KL terms to compute (default all).
            L_T is exact (closed form); L_0 and each KL term are one-draw estimates (one x_t per
            image, the KL itself in closed form given x_t); a subset of the KL terms gives an unbiased estimate
            of their sum when drawn uniformly (or stratified): their mean times (T - 1).
    Returns:
        {"total", "prior", "decoder", "terms"}: bits/dim per image (B,), terms (B, K).
    """
    T = schedule.num_timesteps
    timesteps = torch.arange(1, T) if timesteps is None else timesteps
    if int(timesteps.min()) < 1:
        raise ValueError("timesteps must lie in [1, T-1]: L_0 is always computed")
    dims = x0[0].numel()
    b = x0.shape[0]
    terms = []
    for index in [0, *timesteps.tolist()]:
        t = torch.full((b,), index, device=x0.device, dtype=torch.long)
        eps = torch.randn(x0.shape, device=x0.device, generator=generator)
        xt = schedule.q_sample(x0, t, eps)
        _, x0_pred = model_outputs(model(xt, t, labels), schedule, xt, t, prediction, clip=False)
        mean_pred, _, logvar = schedule.q_posterior(x0_pred, xt, t)
        if index == 0:
            nats = -discretized_gaussian_log_likelihood(x0, mean_pred, 0.5 * logvar).flatten(1).sum(1)
        else:
            mean_true, _, logvar_true = schedule.q_posterior(x0, xt, t)
            nats = normal_kl(mean_true, logvar_true, mean_pred, logvar).flatten(1).sum(1)
        terms.append(bits_per_dim(nats, dims))
    decoder, terms = terms[0], torch.stack(terms[1:], 1)                  # (B,), (B, K)
    t_last = torch.full((b,), T - 1, device=x0.device, dtype=torch.long)
    mean_T = schedule.q_sample(x0, t_last, torch.zeros_like(x0))
    logvar_T = torch.log(1 - schedule.alpha_bar[t_last]).reshape(-1, 1, 1, 1).expand_as(x0)
    prior = bits_per_dim(normal_kl(mean_T, logvar_T, torch.zeros_like(x0), torch.zeros_like(x0))
                         .flatten(1).sum(1), dims)
    total = prior + decoder + terms.mean(1) * (T - 1)
    return {"total": total, "prior": prior, "decoder": decoder, "terms": terms}
