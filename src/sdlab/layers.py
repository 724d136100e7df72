"""Blocks shared by the VAE and the U-Net: GroupNorm, dropout, residual block, self-attention,
down/up sampling (GroupNorm, dropout and attention with fast paths for CPU tensors).

Shapes are (B, C, H, W) throughout. References: DDPM's U-Net (arXiv:2006.11239, App. B), the
Stable Diffusion autoencoder (LDM, arXiv:2112.10752).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm(nn.GroupNorm):
    """GroupNorm (Wu & He, arXiv:1803.08494, eq. 1-2), optionally followed by SiLU.

    Up to 32 groups of at least 4 channels (32 groups at 128+ channels); eps 1e-6.

    On CPU, bf16 convolutions are about 2x faster channels-last (NHWC) than NCHW, but torch 2.14's
    native channels-last bf16 GroupNorm is several times slower than its NCHW kernel (backward
    above all). That one case goes through `GroupNormNHWC`, which the same few vectorised tensor
    ops compute in any layout; everything else uses the native kernel.
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


def _per_channel(v: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, G) group values -> (B, C), each group's value repeated over its channels."""
    return v.repeat_interleave(channels // v.shape[1], 1)


def _spatial(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B, C, 1, 1) in `like`'s dtype, to broadcast over H and W."""
    return v[:, :, None, None].to(like.dtype)


def _channel_sums(x: torch.Tensor, groups: int | None = None) -> torch.Tensor:
    """Sums over H, W in x's dtype (float32 accumulation inside), as at least float32: (B, C) or (B, G)."""
    s = x.sum((2, 3))
    s = s.to(torch.promote_types(s.dtype, torch.float32))
    return s if groups is None else s.view(s.shape[0], groups, -1).sum(2)


class GroupNormNHWC(torch.autograd.Function):
    """GroupNorm (+ SiLU) from elementwise ops and per-channel sums, with a hand-written backward.

    Forward, per sample b and group g of n = (C/G) H W values:
        m0 = group mean from bf16-rounded channel sums (only an approximate centre),
        xc = x - m0, delta = mean(xc), var = mean(xc^2) - delta^2   (centring keeps bf16 sums exact enough)
        mu = m0 + delta, r = (var + eps)^-1/2, y = gamma * (xc - delta) * r + beta, out = silu(y) or y.
    Backward, with g = dL/dy and xhat = (xc - delta) r (the standard normalisation gradient):
        dL/dx = r (gamma g - mean_group(gamma g) - xhat mean_group(gamma g xhat)).
    Statistics are float32; the big tensors stay in x's dtype and layout.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float, act: bool):
        channels = x.shape[1]
        n = x[0, 0].numel() * (channels // groups)
        m0 = _channel_sums(x, groups) / n                                       # (B, G)
        xc = x - _spatial(_per_channel(m0, channels), x)
        delta = _channel_sums(xc, groups) / n
        var = _channel_sums(xc.square(), groups) / n - delta.square()
        rstd = (var.clamp_min(0) + eps).rsqrt()
        scale = _per_channel(rstd, channels) * weight                            # (B, C): gamma r
        shift = bias - _per_channel(delta, channels) * scale
        y = torch.addcmul(_spatial(shift, x), xc, _spatial(scale, x))
        ctx.save_for_backward(xc, y if act else None, weight, scale, delta, rstd)
        ctx.groups, ctx.n, ctx.act = groups, n, act
        return F.silu(y) if act else y

    @staticmethod
    def backward(ctx, grad_out):
        xc, y, weight, scale, delta, rstd = ctx.saved_tensors
        batch, channels = xc.shape[:2]
        g = torch.ops.aten.silu_backward(grad_out, y) if ctx.act else grad_out   # dL/dy
        sum_g = _channel_sums(g)                                                 # (B, C)
        sum_g_xhat = (_channel_sums(g * xc) - sum_g * _per_channel(delta, channels)) * _per_channel(rstd, channels)
        per_group = lambda s: (s * weight).view(batch, ctx.groups, -1).sum(2)   # (B, G)
        k1 = -rstd.square() * per_group(sum_g_xhat) / ctx.n                      # coefficient of xc
        k2 = -rstd * per_group(sum_g) / ctx.n - k1 * delta                       # constant term
        grad_x = torch.addcmul(_spatial(_per_channel(k2, channels), g), xc, _spatial(_per_channel(k1, channels), g))
        grad_x.addcmul_(g, _spatial(scale, g))
        return grad_x, sum_g_xhat.sum(0), sum_g.sum(0), None, None, None


class Dropout(nn.Module):
    """Inverted dropout (zero with probability p, scale survivors by 1/(1-p)), cheaper on CPU.

    nn.Dropout draws one random number per element (bernoulli_), which on this 2-core CPU was
    12% of a U-Net training step in bf16. Here each 64-bit random integer supplies four 16-bit
    uniforms, so p is applied with a resolution of 1/65536. The mask is built in x's layout and
    dtype (0 or 1/(1-p), so in bf16 the scale is rounded: 1.109 instead of 1.111 for p = 0.1) and
    applied with one multiplication. On CUDA it is plain F.dropout.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        if not (x.is_contiguous() or is_channels_last(x)):
            x = x.contiguous()
        n = x.numel()
        bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        # uniform on [-32768, 32767], laid out like x (NCHW or NHWC) so the product is one fast pass
        uniform16 = bits.view(torch.int16)[:n].as_strided(x.shape, x.stride())
        keep = uniform16 >= round(self.p * 65536) - 32768
        scale = torch.tensor(1.0 / (1.0 - self.p), dtype=x.dtype)
        return x * torch.where(keep, scale, torch.zeros((), dtype=x.dtype))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus a skip; an optional embedding is added in between.

    Args:
        in_channels, out_channels: channel counts; a 1x1 conv matches the skip when they differ.
        emb_channels: width of the (time) embedding added after the first conv; 0 for none.
        dropout: dropout before the second conv.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        self.norm1 = GroupNorm(in_channels, act=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_channels, out_channels) if emb_channels else None
        self.norm2 = GroupNorm(out_channels, act=True)
        self.dropout = Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.norm1(x))
        if self.emb is not None:
            h = h + self.emb(F.silu(emb))[:, :, None, None]       # (B, C_out, 1, 1)
        h = self.conv2(self.dropout(self.norm2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection.

    Uses F.scaled_dot_product_attention, except on CPU in bf16: there both of torch 2.14's
    kernels (default/flash and math) are slower than the same softmax(q k^T / sqrt(d)) v written
    as two matmuls (`attention_matmuls`), by 1.4-2.6x forward + backward for 64-256 tokens
    (bench/cpu_kernels.py). In fp32 the default kernel is the fastest.
    """

    def __init__(self, channels: int, heads: int = 1):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention: channels {channels} not divisible by heads {heads}")
        self.heads = heads
        self.norm = GroupNorm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # The 1x1 convs run as matmuls over the H*W tokens: for an NHWC x, (B, HW, C) is a view,
        # so no transposed copy is made on the way in or out.
        tokens = self.norm(x).flatten(2).transpose(1, 2)                       # (B, HW, C)
        qkv = F.linear(tokens, self.qkv.weight.flatten(1), self.qkv.bias)      # (B, HW, 3C)
        q, k, v = qkv.view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:                # each (B, heads, HW, C/heads)
            a = attention_matmuls(q, k, v)
        else:
            a = F.scaled_dot_product_attention(q, k, v)
        a = F.linear(a.transpose(1, 2).reshape(b, h * w, c), self.out.weight.flatten(1), self.out.bias)
        return x + a.transpose(1, 2).view(b, c, h, w)


def attention_matmuls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention softmax(q k^T / sqrt(d)) v (Vaswani et al. 2017, eq. 1).

    q, k, v: (..., N, d). The (..., N, N) weights are materialised, fine for the <= 256 tokens
    of a 32x32 U-Net; autograd differentiates the two matmuls and the softmax.
    """
    weights = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    return torch.matmul(weights.softmax(-1), v)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 conv."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
