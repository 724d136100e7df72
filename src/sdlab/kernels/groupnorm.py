"""GroupNorm (+ SiLU), with a fused path for channels-last bf16 tensors on CPU.

GroupNorm (Wu & He, arXiv:1803.08494, eq. 1-2) normalises each sample's group of C/G channels
over the channels and H, W, then applies a per-channel affine: y = gamma * xhat + beta.

Why a second path: on CPU, bf16 convolutions are faster channels-last (NHWC) than NCHW, but
torch 2.14's native NHWC bf16 GroupNorm backward is many times slower than its NCHW one, and the
same maths from plain tensor ops (one pass over memory per op) was still slower than native
NCHW. `GroupNormNHWC` writes it as four small elementwise-and-reduce functions that
torch.compile fuses into kernels reading the big tensors once (timings: bench/cpu_kernels.py,
BENCHMARKS.md, "U-Net vs Hugging Face diffusers").
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import first_line


class GroupNorm(nn.GroupNorm):
    """GroupNorm, optionally followed by SiLU; up to 32 groups of at least 4 channels, eps 1e-6.

    Channels-last bf16 CPU tensors go through `GroupNormNHWC`; everything else through the native
    kernel. Same parameters and state-dict keys as nn.GroupNorm.
    """

    def __init__(self, channels: int, act: bool = False):
        groups = max(1, min(32, channels // 4))
        while channels % groups:
            groups -= 1
        super().__init__(groups, channels, eps=1e-6)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.bfloat16 and is_channels_last(x):
            return GroupNormNHWC.apply(x, self.weight, self.bias, self.num_groups, self.eps, self.act)
        y = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.silu(y) if self.act else y

    def extra_repr(self) -> str:
        return super().extra_repr() + (", act=silu" if self.act else "")


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-D NHWC tensor that is not also NCHW-contiguous (1x1 maps are both)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def fused(fn):
    """`fn` compiled by torch.compile on first use; `fn` itself, after one warning, if that first
    compile fails (inductor needs a C++ compiler). Either way the result is the same."""
    compiled = None

    def call(*args):
        nonlocal compiled
        if compiled is None:                         # here, not at import: importing dynamo takes a while
            compiled = torch.compile(fn, dynamic=None)
            try:
                return compiled(*args)
            except Exception as err:
                warnings.warn(f"torch.compile failed for {fn.__name__} ({type(err).__name__}: {first_line(err)}); "
                              "running it uncompiled (same result, slower)", stacklevel=2)
                compiled = fn
        return compiled(*args)

    return call


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in at least float32 (the kernels compute in float32 and store in x's dtype)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _affine(x, scale, shift):
    """y = x * scale + shift with (B, C) coefficients: the normalised output."""
    return _wide(x) * scale[:, :, None, None] + shift[:, :, None, None]


def _grad_y(grad_out, x, scale, shift, act: bool):
    """dL/dy from dL/dout; through SiLU (y recomputed from x) when act: silu'(y) = s (1 + y (1 - s))."""
    if not act:
        return _wide(grad_out)
    y = _affine(x, scale, shift)
    s = torch.sigmoid(y)
    return _wide(grad_out) * s * (1 + y * (1 - s))


@fused
def channel_moments(x):
    """Per (sample, channel) sums of x and x^2 over H, W in float32: two (B, C) tensors, one read of x."""
    x = _wide(x)
    return x.sum((2, 3)), x.square().sum((2, 3))


@fused
def normalize(x, scale, shift, act: bool):
    """out = silu(y) or y, y = x * scale + shift, in x's dtype and layout."""
    y = _affine(x, scale, shift)
    return (F.silu(y) if act else y).to(x.dtype)


@fused
def grad_sums(grad_out, x, scale, shift, act: bool):
    """Per (sample, channel) sums over H, W of g = dL/dy and of g * x, float32."""
    g = _grad_y(grad_out, x, scale, shift, act)
    return g.sum((2, 3)), (g * _wide(x)).sum((2, 3))


@fused
def grad_input(grad_out, x, scale, shift, k1, k2, act: bool):
    """dL/dx = g * scale + x * k1 + k2 with (B, C) coefficients, in x's dtype."""
    g = _grad_y(grad_out, x, scale, shift, act)
    return (g * scale[:, :, None, None] + _wide(x) * k1[:, :, None, None] + k2[:, :, None, None]).to(x.dtype)


def _per_channel(v: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, G) group values -> (B, C), each group's value repeated over its channels."""
    return v.repeat_interleave(channels // v.shape[1], 1)


class GroupNormNHWC(torch.autograd.Function):
    """GroupNorm (+ SiLU) from per-channel sums, with a hand-written backward; any layout.

    Forward, per sample b and group g of n = (C/G) H W values, from the channel sums of x and x^2:
        mu = mean, var = mean(x^2) - mu^2, r = (var + eps)^-1/2 (float32 sums of exact bf16
        values: var keeps ~1e-7 (mu / std)^2 relative error, fine while |mu| / std < ~100),
        y = x * scale + shift with scale = gamma r, shift = beta - mu gamma r; out = silu(y) or y.
    Only x is kept for the backward (y is recomputed inside its kernels). With g = dL/dy and
    xhat = (x - mu) r (the standard normalisation gradient):
        dL/dx = r (gamma g - mean_group(gamma g) - xhat mean_group(gamma g xhat))
              = g scale + x k1 + k2,  k1 = -r^2 mean_group(gamma g xhat),  k2 = -r mean_group(gamma g) - k1 mu,
        dL/dgamma = sum g xhat,  dL/dbeta = sum g.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float, act: bool):
        batch, channels = x.shape[:2]
        n = x[0, 0].numel() * (channels // groups)
        per_group = lambda s: s.view(batch, groups, -1).sum(2)                   # (B, C) -> (B, G)
        sum_x, sum_x2 = channel_moments(x)
        mean = per_group(sum_x) / n
        rstd = ((per_group(sum_x2) / n - mean.square()).clamp_min(0) + eps).rsqrt()
        scale = _per_channel(rstd, channels) * weight                            # (B, C): gamma r
        shift = bias - _per_channel(mean, channels) * scale
        ctx.save_for_backward(x, weight, mean, rstd, scale, shift)
        ctx.groups, ctx.n, ctx.act = groups, n, act
        return normalize(x, scale, shift, act)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, rstd, scale, shift = ctx.saved_tensors
        batch, channels = x.shape[:2]
        gamma_group_sum = lambda s: (s * weight).view(batch, ctx.groups, -1).sum(2)   # (B, C) -> (B, G)
        sum_g, sum_gx = grad_sums(grad_out, x, scale, shift, ctx.act)
        sum_g_xhat = (sum_gx - _per_channel(mean, channels) * sum_g) * _per_channel(rstd, channels)
        k1 = -rstd.square() * gamma_group_sum(sum_g_xhat) / ctx.n
        k2 = -rstd * gamma_group_sum(sum_g) / ctx.n - k1 * mean
        grad_x = grad_input(grad_out, x, scale, shift, _per_channel(k1, channels), _per_channel(k2, channels), ctx.act)
        return grad_x, sum_g_xhat.sum(0), sum_g.sum(0), None, None, None
