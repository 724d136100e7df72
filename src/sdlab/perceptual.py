"""Perceptual distances that need no download, for Stable Diffusion's autoencoder loss.

Watson's perceptual model in DFT space (Czolbe, Krause, Cox, Igel: "A Loss Function for
Generative Neural Networks Based on Watson's Perceptual Model", NeurIPS 2020), with the initial
parameters the paper starts its training from, so nothing is fitted or fetched:

    c = rfft2(8x8 block) / 64                  per block k of each YCbCr channel of x (target) and x_hat
    t_l[k, f] = t[f] * (|c_k0| / mean_k |c_k0|)^alpha           luminance masking (c_k0: the block's DC term)
    s[k, f]   = smoothmax(t_l, |c_kf|^w * t_l^(1 - w))         contrast masking
    D_amp     = (sum_k,f |(|c_hat| - |c|) / s|^beta)^(1/beta)   Minkowski pooling
    D_phase   = sum_k,f w_phase[f] * angle(c_hat, c)            phase term (the angle between the two)
    D         = sum over Y, Cb, Cr of (D_amp + D_phase) / 3, returned per pixel: D / (H W)

with t = 1 (a uniform table), alpha = 0.1, w = 0.2, beta = 1 and w_phase = exp(-2) (zero for the
real coefficients, whose phase is 0 or pi). smoothmax(a, b) = (a e^a + b e^b) / (e^a + e^b).
Images arrive in [-1, 1] and are mapped to [0, 1] first, as the paper's model expects. D is a sum
over the image's blocks; divided by the pixel count it is added to each pixel's reconstruction
cost (`autoencoder_loss`), so the image's loss gains D once, as LDM adds LPIPS (a spatial mean). Unlike the
reference code, the mean DC amplitude is taken per image, not over the batch, so an image's
distance does not depend on the batch it is in (and on the number of processes).
"""

from __future__ import annotations

import torch
from torch import nn

BLOCK = 8
EPS = 1e-10
PHASE_EPS = 1e-12     # atan2's gradient at (0, PHASE_EPS) stays finite in float32 (PHASE_EPS^2 is a normal float)
# rows of ITU-R BT.601 RGB -> YCbCr (the offsets do not change a difference and are left out)
YCBCR = ((0.299, 0.587, 0.114), (-0.1687, -0.3313, 0.5), (0.5, -0.4187, -0.0813))


def block_rfft(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> the real 2-D DFT of every non-overlapping 8x8 block, divided by 64:
    complex (B, C, K, 8, 5) with K = (H / 8) (W / 8) blocks."""
    B, C, H, W = x.shape
    if H % BLOCK or W % BLOCK:
        raise ValueError(f"Watson's distance needs sides divisible by {BLOCK} (got {H}x{W})")
    blocks = x.reshape(B, C, H // BLOCK, BLOCK, W // BLOCK, BLOCK).permute(0, 1, 2, 4, 3, 5)
    return torch.fft.rfft2(blocks.reshape(B, C, -1, BLOCK, BLOCK).float()) / BLOCK**2


def smoothmax(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a and b weighted by softmax(a, b): a smooth, differentiable max."""
    weights = torch.softmax(torch.stack([a, b]), dim=0)
    return a * weights[0] + b * weights[1]


class WatsonDFT(nn.Module):
    """D(x_hat, x) / (H W) per image (B,), x the reference; differentiable in x_hat, no trained weights."""

    def __init__(self):
        super().__init__()
        freq = (BLOCK, BLOCK // 2 + 1)
        self.register_buffer("ycbcr", torch.tensor(YCBCR))
        self.register_buffer("t", torch.ones(3, *freq))               # sensitivity table, per channel
        self.alpha, self.w, self.beta = 0.1, 0.2, 1.0
        phase = torch.full((3, *freq), torch.e ** -2)
        real = torch.zeros(freq, dtype=torch.bool)                    # coefficients without a phase
        real[0::BLOCK // 2, 0::BLOCK // 2] = True
        self.register_buffer("w_phase", phase.masked_fill(real, 0.0))

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        to_ycbcr = lambda im: torch.einsum("oc,bchw->bohw", self.ycbcr, (im.float() + 1) / 2)
        c_hat, c = block_rfft(to_ycbcr(x_hat)), block_rfft(to_ycbcr(x))
        amp_hat, amp = (v.abs().clamp_min(EPS) for v in (c_hat, c))
        dc = amp[..., 0, 0]                                           # (B, 3, K)
        t_l = self.t[None, :, None] * ((dc + EPS) / (dc.mean(-1, keepdim=True) + EPS)).pow(self.alpha)[..., None, None]
        s = smoothmax(t_l, amp.pow(self.w) * t_l.pow(1 - self.w))
        d_amp = ((amp_hat - amp) / s).abs().add(EPS).pow(self.beta).sum((2, 3, 4)).pow(1 / self.beta)
        # the angle between the two coefficients, in [0, pi]: 0 where either is zero (no phase;
        # a flat 8x8 block of the target, as JPEG makes them, has every AC coefficient exactly 0)
        prod = c_hat * c.conj()
        angle = torch.atan2(prod.imag.abs(), prod.real + PHASE_EPS)
        d_phase = (angle * self.w_phase[None, :, None]).sum((2, 3, 4))
        return (d_amp + d_phase).mean(1) / (x.shape[-2] * x.shape[-1])
