"""Dropout whose mask is drawn and laid out for the CPU (see `Dropout`).

Reference: Srivastava et al., Dropout (JMLR 2014), in its inverted form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .groupnorm import is_channels_last


class Dropout(nn.Module):
    """Inverted dropout (zero with probability p, scale survivors by 1/(1-p)), cheaper on CPU.

    nn.Dropout draws one random number per element (bernoulli_), a visible share of a CPU U-Net
    step in bf16 (BENCHMARKS.md). Here each 64-bit random integer supplies four 16-bit
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
