"""Blocks shared by the VAE and the U-Net: convolution, dropout, residual block, self-attention,
down/up sampling; convolution, dropout and attention have fast paths for CPU tensors
(GroupNorm and its fast path are in groupnorm.py).

Shapes are (B, C, H, W) throughout. References: DDPM's U-Net (arXiv:2006.11239, App. B), the
Stable Diffusion autoencoder (LDM, arXiv:2112.10752).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .groupnorm import GroupNorm, is_channels_last


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


class Conv2d(nn.Conv2d):
    """nn.Conv2d whose weight gradient on tiny CPU maps (H * W <= 16) is computed as a convolution.

    oneDNN's backward-weights kernel is slow on the 4x4 and 2x2 maps of a latent U-Net's lower
    levels (3x3 conv 128->128 at 2x2, batch 64: 0.85 ms, against 0.12 ms forward). The weight
    gradient is itself a correlation, dW[o, i, ky, kx] = sum_{b, y, x} dy[b, o, y, x]
    x_pad[b, i, s y + ky, s x + kx], i.e. a convolution of x_pad (batch and channels swapped)
    with dy as the kernel (dilation s = stride), which oneDNN's forward kernel computes 2-3x
    faster there (`TinyMapConv`); with the fixed costs of each call, a latent U-Net step at
    batch 128 gains about 8% (BENCHMARKS.md). Same parameters, state-dict keys and results as
    nn.Conv2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tiny = (x.device.type == "cpu" and x.shape[-2] * x.shape[-1] <= 16 and torch.is_grad_enabled()
                and self.weight.requires_grad and self.groups == 1 and self.dilation == (1, 1)
                and self.padding_mode == "zeros" and not isinstance(self.padding, str))
        if not tiny:
            return super().forward(x)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        with torch.autocast("cpu", enabled=False):                 # cast once here, as autocast would
            return TinyMapConv.apply(x.to(dtype), self.weight.to(dtype), bias, self.stride, self.padding)


class TinyMapConv(torch.autograd.Function):
    """F.conv2d with the weight gradient computed by a forward convolution (see `Conv2d`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        (ph, pw), (kh, kw) = ctx.padding, weight.shape[2:]
        dx = torch.ops.aten.convolution_backward(dy, x, weight, None, ctx.stride, ctx.padding, [1, 1], False,
                                                 [0, 0], 1, [ctx.needs_input_grad[0], False, False])[0]
        x_pad = F.pad(x, (pw, pw, ph, ph)).transpose(0, 1)                    # (C_in, B, H + 2p, W + 2p)
        dw = F.conv2d(x_pad, dy.transpose(0, 1), dilation=ctx.stride)        # (C_in, C_out, >= kh, >= kw)
        db = dy.sum((0, 2, 3)) if ctx.has_bias else None
        return dx, dw[:, :, :kh, :kw].transpose(0, 1), db, None, None


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
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_channels, out_channels) if emb_channels else None
        self.norm2 = GroupNorm(out_channels, act=True)
        self.dropout = Dropout(dropout)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

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
    as two matmuls (`attention_matmuls`), by 1.2-2.6x forward + backward for 64-256 tokens
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
        self.conv = Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 conv."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
