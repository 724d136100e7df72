"""The PatchGAN discriminator of Stable Diffusion's autoencoder loss, sized for small images.

pix2pix's PatchGAN (Isola et al. 2017) classifies overlapping patches as real or generated:
`layers` stride-2 4x4 convolutions, then two stride-1 4x4 convolutions, the last to one logit per
patch. Its receptive field r grows as r_in = s * r_out + (k - s) going back through the layers:
16 pixels for 1 stride-2 layer, 34 for 2, 70 for 3 (pix2pix's default, used by LDM at 256x256).
On a 32x32 image three layers leave a 2x2 map whose every logit sees more than the whole image;
one layer gives a 14x14 map of 16x16 patches, half the image side, as 70 is about a quarter of
256: the discriminator judges local texture and sharpness, which is what an L1/L2 decoder loses,
and leaves global structure to the reconstruction term. GroupNorm stands where pix2pix has
BatchNorm, so a logit depends on its own image only (the same under torchrun at any process
count); weights start from N(0, 0.02), as in pix2pix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import option, require, require_choice, require_finite

DISC_LOSSES = ("hinge", "vanilla")


@dataclass(frozen=True)
class DiscriminatorConfig:
    disc_start: int = option(-1, "optimizer step at which the PatchGAN discriminator starts (-1: no adversarial loss)")
    disc_layers: int = option(1, "stride-2 layers of the PatchGAN (1: 16x16-pixel patches; pix2pix's 3 sees 70x70)")
    disc_channels: int = option(64, "channels of its first layer (doubled per layer, at most 8x)")
    disc_loss: str = option("hinge", "discriminator loss: hinge (LDM's) or vanilla (non-saturating)", choices=DISC_LOSSES)
    disc_weight: float = option(0.5, "scale of the adaptive weight of the generator's adversarial term (LDM: 0.5)")
    disc_lr: float = option(0.0, "discriminator learning rate (0: the autoencoder's --lr)")

    def __post_init__(self):
        require_finite(self)
        require(self.disc_start >= -1, "disc_start", f"must be >= -1 (got {self.disc_start})")
        require(1 <= self.disc_layers <= 4, "disc_layers", f"must be in 1..4 (got {self.disc_layers})")
        require(self.disc_channels >= 8, "disc_channels", f"must be >= 8 (got {self.disc_channels})")
        require_choice(self.disc_loss, DISC_LOSSES, "disc_loss")
        require(self.disc_weight >= 0, "disc_weight", f"must be >= 0 (got {self.disc_weight})")
        require(self.disc_lr >= 0, "disc_lr", f"must be >= 0 (got {self.disc_lr})")

    @property
    def adversarial(self) -> bool:
        return self.disc_start >= 0


def receptive_field(layers: int) -> int:
    """Side in pixels of the patch one logit sees: r_in = s r_out + (k - s), from the last layer back."""
    r = 1
    for stride in [1, 1] + [2] * layers:
        r = stride * r + (4 - stride)
    return r


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels)


class PatchGAN(nn.Module):
    """(B, C, H, W) in [-1, 1] -> patch logits (B, 1, H', W'), H' = H / 2^layers - 2."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 1):
        super().__init__()
        widths = [channels * min(2**i, 8) for i in range(layers + 1)]
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        for cin, cout in zip(widths[:-2], widths[1:-1]):
            blocks += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), _norm(cout), nn.LeakyReLU(0.2)]
        blocks += [nn.Conv2d(widths[-2], widths[-1], 4, 1, 1, bias=False), _norm(widths[-1]), nn.LeakyReLU(0.2),
                   nn.Conv2d(widths[-1], 1, 4, 1, 1)]
        self.net = nn.Sequential(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
