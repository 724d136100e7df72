"""Blocks shared by the VAE and the U-Net: residual block, self-attention, down/up sampling.

They are built from `kernels` (GroupNorm, Conv2d, Dropout, attention), which keep the
state-dict keys and results of the PyTorch modules they stand for and add fast CPU paths.

Shapes are (B, C, H, W) throughout. References: DDPM's U-Net (arXiv:2006.11239, App. B), the
Stable Diffusion autoencoder (LDM, arXiv:2112.10752).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels.attention import scaled_dot_product
from .kernels.conv import Conv2d
from .kernels.dropout import Dropout
from .kernels.groupnorm import GroupNorm


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
    """Multi-head self-attention over the H*W positions, with a residual connection
    (the kernel is chosen by `kernels.attention.scaled_dot_product`)."""

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
        a = scaled_dot_product(q, k, v)                                        # each (B, heads, HW, C/heads)
        a = F.linear(a.transpose(1, 2).reshape(b, h * w, c), self.out.weight.flatten(1), self.out.bias)
        return x + a.transpose(1, 2).view(b, c, h, w)


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
