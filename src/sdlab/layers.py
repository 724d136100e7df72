"""Blocks shared by the VAE and the U-Net: residual block, self-attention, down/up sampling.

Shapes are (B, C, H, W) throughout. References: DDPM's U-Net (arXiv:2006.11239, App. B), the
Stable Diffusion autoencoder (LDM, arXiv:2112.10752).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels (32 groups at 128+ channels)."""
    groups = max(1, min(32, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


class Dropout(nn.Module):
    """Inverted dropout (zero with probability p, scale survivors by 1/(1-p)), cheaper on CPU.

    nn.Dropout draws one random number per element (bernoulli_), which on this 2-core CPU was
    12% of a U-Net training step in bf16. Here each 64-bit random integer supplies four 16-bit
    uniforms, so p is applied with a resolution of 1/65536. On CUDA it is plain F.dropout.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        uniform16 = bits.view(torch.int16)[:n].view(x.shape)        # uniform on [-32768, 32767]
        keep = uniform16 >= round(self.p * 65536) - 32768
        return x * keep * (1.0 / (1.0 - self.p))

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
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_channels, out_channels) if emb_channels else None
        self.norm2 = group_norm(out_channels)
        self.dropout = Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None:
            h = h + self.emb(F.silu(emb))[:, :, None, None]       # (B, C_out, 1, 1)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection.

    Uses F.scaled_dot_product_attention. On CPU in bf16 it forces the math kernel: with
    torch 2.14 the default (flash) CPU kernel's bf16 backward is several times slower, while in
    fp32 the default kernel is the faster one.
    """

    def __init__(self, channels: int, heads: int = 1):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention: channels {channels} not divisible by heads {heads}")
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)                 # each (B, heads, HW, C/heads)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            with sdpa_kernel(SDPBackend.MATH):
                a = F.scaled_dot_product_attention(q, k, v)
        else:
            a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.out(a)


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
