"""Classifier-free guidance (Ho & Salimans, arXiv:2207.12598).

Training drops each label to the null class with probability p, so one network learns both
eps(x_t, t, c) and eps(x_t, t, null). Sampling extrapolates from the unconditional prediction
toward the conditional one (the paper's eq. (6), written with w = 1 + their w):

    eps_guided = eps_uncond + w * (eps_cond - eps_uncond)

w = 0 is unconditional, w = 1 conditional, w > 1 trades diversity for fidelity to the class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import option, require, require_finite
from ..randomness import NoiseSource


@dataclass(frozen=True)
class GuidanceConfig:
    class_cond: bool = option(False, "condition the U-Net on class labels (with label dropout)")
    cond_drop_prob: float = option(0.1, "probability of replacing a label by the null class in training")
    guidance_scale: float = option(2.0, "classifier-free guidance w for sample grids (0: unconditional)")

    def __post_init__(self):
        require_finite(self)
        require(0 <= self.cond_drop_prob < 1, "cond_drop_prob",
                f"must be in [0, 1) (got {self.cond_drop_prob})")
        require(self.guidance_scale >= 0, "guidance_scale", f"must be >= 0 (got {self.guidance_scale})")


def drop_labels(labels: torch.Tensor, prob: float, null_class: int,
                generator: torch.Generator | NoiseSource | None = None) -> torch.Tensor:
    """Replace each label (B,) by `null_class` with probability `prob` (label dropout)."""
    if prob <= 0:
        return labels
    drop = NoiseSource.of(generator).uniform(labels.shape[0], labels.device) < prob
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def guided(model, labels: torch.Tensor, scale: float, null_class: int):
    """A denoiser callable(x_t, t, _) that applies guidance with one batched forward pass.

    The batch is doubled: the first half carries `labels`, the second the null class; the two
    outputs are combined as uncond + scale * (cond - uncond).
    """
    null = torch.full_like(labels, null_class)

    def denoiser(xt: torch.Tensor, t: torch.Tensor, _labels=None) -> torch.Tensor:
        out = model(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([labels, null]))
        cond, uncond = out.chunk(2)
        return uncond + scale * (cond - uncond)

    return denoiser
