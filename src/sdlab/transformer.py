"""Transformer blocks: the text encoder's layers and the U-Net's cross-attention to a prompt.

Stable Diffusion's U-Net (LDM, arXiv:2112.10752, section 3.3) reads the prompt through a
"SpatialTransformer" after its residual blocks: the feature map becomes H*W tokens, and each
`TransformerBlock` applies, with pre-norm residuals,

    h = h + SelfAttention(LN(h))                       the image tokens look at each other
    h = h + CrossAttention(LN(h), context)             ... and at the prompt's token states:
            softmax(Q K^T / sqrt(d)) V,  Q = LN(h) W_q,  K = context W_k,  V = context W_v
    h = h + FeedForward(LN(h))

SD's feed-forward is a GEGLU; ours is the plain GELU MLP of the original Transformer, which is
what the text encoder uses too. Keys of padding tokens are masked, so the output does not
depend on how a prompt is padded. Shapes: tokens (B, N, C), context (B, L, C_ctx), the mask
over context tokens (B, L) bool (True = a real token).
"""

from __future__ import annotations

import torch
from torch import nn

from .kernels.attention import attention_weights, scaled_dot_product
from .kernels.groupnorm import GroupNorm


class MultiHeadAttention(nn.Module):
    """Attention of the tokens x (B, N, C) to `context` (B, L, C_ctx), or to themselves.

    Setting `record` to a list makes every call append its attention weights
    (B, heads, N, L) there, on the CPU (the cross-attention maps figure)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention: width {dim} not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(context_dim or dim, dim, bias=False)
        self.v = nn.Linear(context_dim or dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.record: list | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, c = x.shape
        split = lambda y: y.view(b, y.shape[1], self.heads, c // self.heads).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(context)), split(self.v(context))
        keep = None if mask is None else mask[:, None, None, :]        # (B, 1, 1, L)
        if self.record is not None:
            weights = attention_weights(q, k, keep)
            self.record.append(weights.detach().float().cpu())
            a = torch.matmul(weights, v)
        else:
            a = scaled_dot_product(q, k, v, keep)                      # (B, heads, N, C/heads)
        return self.out(a.transpose(1, 2).reshape(b, n, c))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention (when `context_dim`) and feed-forward, each
    with a residual connection."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, ff_mult: int = 4):
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), MultiHeadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim) if context_dim else None
        self.attn2 = MultiHeadAttention(dim, heads, context_dim) if context_dim else None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim))

    def forward(self, x: torch.Tensor, self_mask: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), mask=self_mask)
        if self.attn2 is not None:
            x = x + self.attn2(self.norm2(x), context, context_mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """A feature map (B, C, H, W) attends to itself and to a prompt's token states: GroupNorm,
    a linear projection to H*W tokens, a `TransformerBlock`, a projection back (zero-initialised,
    so a new block starts as the identity) and a residual."""

    def __init__(self, channels: int, heads: int, context_dim: int):
        super().__init__()
        self.norm = GroupNorm(channels)
        self.proj_in = nn.Linear(channels, channels)
        self.block = TransformerBlock(channels, heads, context_dim)
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))       # (B, HW, C)
        tokens = self.proj_out(self.block(tokens, context=context, context_mask=mask))
        return x + tokens.transpose(1, 2).reshape(b, c, h, w)

    @property
    def cross_attention(self) -> MultiHeadAttention:
        return self.block.attn2
