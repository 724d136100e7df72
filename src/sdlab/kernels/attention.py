"""Scaled dot-product attention, routed to the fastest kernel for the tensor at hand.

On CPU in bf16, torch 2.14's SDPA kernels (default/flash and math) were both slower than the
same softmax(q k^T / sqrt(d)) v written as two matmuls (`attention_matmuls`); in fp32 and on
GPUs `F.scaled_dot_product_attention` is used. Timings: BENCHMARKS.md ("U-Net vs Hugging Face
diffusers", bench/cpu_kernels.py).

A boolean `mask` (broadcastable to (B, heads, N_q, N_k), True = may attend) hides keys, e.g.
the padding tokens of a prompt; every query must see at least one key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def scaled_dot_product(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for q (B, heads, N_q, d), k and v (B, heads, N_k, d), by the
    fastest kernel here."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        return attention_matmuls(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) over the keys, (..., N_q, N_k); masked keys get weight 0."""
    logits = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(-1)


def attention_matmuls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention softmax(q k^T / sqrt(d)) v (Vaswani et al. 2017, eq. 1).

    q, k, v: (..., N, d). The (..., N_q, N_k) weights are materialised, fine for the <= 256
    tokens of a 32x32 U-Net; autograd differentiates the two matmuls and the softmax.
    """
    return torch.matmul(attention_weights(q, k, mask), v)
