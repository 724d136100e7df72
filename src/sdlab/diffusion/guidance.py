"""Classifier-free guidance (Ho & Salimans, arXiv:2207.12598).

Training drops each label to the null class with probability p, so one network learns both
eps(x_t, t, c) and eps(x_t, t, null). Sampling extrapolates from the unconditional prediction
toward the conditional one (the paper's eq. (6), written with w = 1 + their w):

    eps_guided = eps_uncond + w * (eps_cond - eps_uncond)

w = 0 is unconditional, w = 1 conditional, w > 1 trades diversity for fidelity to the class.

The condition is a class id (B,) whose null is the extra class K, or a prompt's token ids (B, L)
whose null is the empty prompt, or (what sampling hands over, `conditioning.TextCondition`) the
prompt's token states and mask, encoded once before the loop. A *negative prompt* (Stable Diffusion's) is the same formula
with the empty prompt replaced: eps_neg + w * (eps_cond - eps_neg) moves away from what the
negative prompt describes as well as toward the prompt; with the empty prompt it is plain CFG.
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


def null_like(labels, null):
    """The null condition in the shape of `labels`: the null class id (B,), or the empty
    prompt's ids (L,) repeated to (B, L); an encoded condition (a tuple of tensors) is batched
    already."""
    if isinstance(null, tuple):
        return null
    if isinstance(null, int):
        return torch.full_like(labels, null)
    return null.to(labels.device).expand_as(labels)


def drop_labels(labels: torch.Tensor, prob: float, null: int | torch.Tensor,
                generator: torch.Generator | NoiseSource | None = None) -> torch.Tensor:
    """Replace each condition (class id (B,) or prompt ids (B, L)) by `null` with probability
    `prob` (label, or caption, dropout)."""
    if prob <= 0:
        return labels
    drop = NoiseSource.of(generator).uniform(labels.shape[0], labels.device) < prob
    drop = drop.view(-1, *[1] * (labels.ndim - 1))
    return torch.where(drop, null_like(labels, null), labels)


def batch_of(first, second):
    """Two conditions as one batch (tensors, or tuples of tensors, concatenated along dim 0)."""
    if isinstance(first, tuple):
        return tuple(torch.cat(pair) for pair in zip(first, second))
    return torch.cat([first, second])


def guided(model, labels, scale: float, uncond):
    """A denoiser callable(x_t, t, _) that applies guidance with one batched forward pass.

    The batch is doubled: the first half carries `labels` (class ids, prompt ids or encoded
    prompts), the second `uncond` (the null class id, or the empty or negative prompt(s)); the two outputs
    are combined as uncond + scale * (cond - uncond). At w = 0 and w = 1 only one of the two
    terms survives, and only that one is computed (half the work).
    """
    null = null_like(labels, uncond)
    if scale in (0.0, 1.0):
        only = null if scale == 0.0 else labels
        return lambda xt, t, _labels=None: model(xt, t, only)

    def denoiser(xt: torch.Tensor, t: torch.Tensor, _labels=None) -> torch.Tensor:
        out = model(torch.cat([xt, xt]), torch.cat([t, t]), batch_of(labels, null))
        cond, uncond_out = out.chunk(2)
        return uncond_out + scale * (cond - uncond_out)

    return denoiser
