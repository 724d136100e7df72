"""Scaled dot-product attention, routed to the fastest kernel for the tensor at hand.

On CPU in bf16, torch 2.14's SDPA kernels (default/flash and math) were both slower than the
same softmax(q k^T / sqrt(d)) v written as two matmuls (`attention_matmuls`); in fp32 and on
GPUs `F.scaled_dot_product_attention` is used. Timings: BENCHMARKS.md ("U-Net vs Hugging Face
diffusers", bench/cpu_kernels.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def scaled_dot_product(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for q, k, v of shape (B, heads, N, d), by the fastest kernel here."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        return attention_matmuls(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def attention_matmuls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention softmax(q k^T / sqrt(d)) v (Vaswani et al. 2017, eq. 1).

    q, k, v: (..., N, d). The (..., N, N) weights are materialised, fine for the <= 256 tokens
    of a 32x32 U-Net; autograd differentiates the two matmuls and the softmax.
    """
    weights = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    return torch.matmul(weights.softmax(-1), v)
