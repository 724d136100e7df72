"""Conv2d with a faster weight gradient on tiny CPU feature maps (see `Conv2d`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Conv2d(nn.Conv2d):
    """nn.Conv2d whose weight gradient on tiny CPU maps (H * W <= 16) is computed as a convolution.

    oneDNN's backward-weights kernel is slow on the 4x4 and 2x2 maps of a latent U-Net's lower
    levels, several times slower than the forward convolution there. The weight gradient is
    itself a correlation, dW[o, i, ky, kx] = sum_{b, y, x} dy[b, o, y, x]
    x_pad[b, i, s y + ky, s x + kx], i.e. a convolution of x_pad (batch and channels swapped)
    with dy as the kernel (dilation s = stride), which oneDNN's forward kernel computes faster
    there (`TinyMapConv`; timings in BENCHMARKS.md, "Latent vs pixel diffusion"). Same
    parameters, state-dict keys and results as nn.Conv2d.
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
