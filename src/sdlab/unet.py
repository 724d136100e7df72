"""The U-Net noise predictor of DDPM (arXiv:2006.11239, App. B), conditioned on a class or a prompt.

    x_t (B, C, H, W), t (B,) int64, labels (B,) int64 or None -> (B, C_out, H, W)
    x_t, t, context=(token states (B, L, context_dim), mask (B, L) bool)   (text-conditioned)

Sinusoidal embedding of t -> MLP -> added inside every residual block; self-attention at the
chosen resolutions; a down path whose activations are concatenated into the up path. A class
embedding (index num_classes is the null class, used when labels is None) is added to the time
embedding, ready for classifier-free guidance (arXiv:2207.12598). With `context_dim` > 0 the
attention blocks are Stable Diffusion's transformer blocks instead (`transformer.SpatialTransformer`:
self-attention, cross-attention to the prompt's token states, feed-forward), which is how a
prompt reaches every resolution that has one (LDM, arXiv:2112.10752, section 3.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import option, require, require_finite
from .kernels.groupnorm import GroupNorm
from .layers import Attention, Downsample, ResBlock, Upsample
from .transformer import SpatialTransformer

PRESETS = {
    # CPU-sized default: 3 levels (32, 16, 8), attention at 8x8 only.
    "cpu": dict(base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=1,
                attention_resolutions=(8,), dropout=0.1),
    # The paper's 35.7M-parameter CIFAR-10 network.
    "ddpm-cifar10": dict(base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                         attention_resolutions=(16,), dropout=0.1),
}


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = option(3, "image (or latent) channels")
    out_channels: int = option(0, "output channels (0: same as in_channels)")
    image_size: int = option(32, "input side; attention resolutions refer to it")
    base_channels: int = option(64, "channels of the first level")
    channel_mults: tuple[int, ...] = option((1, 2, 2), "channel multiplier per level (a downsampling between levels)")
    num_res_blocks: int = option(1, "residual blocks per level")
    attention_resolutions: tuple[int, ...] = option((8,), "feature-map sides that get self-attention")
    heads: int = option(1, "attention heads")
    dropout: float = option(0.1, "dropout inside residual blocks")
    time_channels: int = option(0, "time-embedding width (0: 4 * base_channels)")
    num_classes: int = option(0, "class-conditional when > 0 (a null class is added)")
    context_dim: int = option(0, "text-conditioned when > 0: width of the prompt's token states, read by "
                                 "cross-attention in transformer blocks at attention_resolutions")

    def __post_init__(self):
        require_finite(self)
        for name in ("in_channels", "base_channels", "num_res_blocks", "heads", "image_size"):
            require(getattr(self, name) >= 1, name, f"must be >= 1 (got {getattr(self, name)})")
        require(len(self.channel_mults) >= 1 and all(m >= 1 for m in self.channel_mults),
                "channel_mults", f"must be positive integers (got {self.channel_mults})")
        require(0 <= self.dropout < 1, "dropout", f"must be in [0, 1) (got {self.dropout})")
        require(self.context_dim >= 0, "context_dim", f"must be >= 0 (got {self.context_dim})")
        require(not (self.context_dim and self.num_classes), "context_dim",
                "a U-Net is conditioned on classes or on text, not both")
        factor = 2 ** (len(self.channel_mults) - 1)
        require(self.image_size % factor == 0, "image_size",
                f"{self.image_size} is not divisible by {factor} (2 ** (levels - 1) of the U-Net)")
        for m in self.channel_mults:
            require(self.base_channels * m % self.heads == 0, "heads",
                    f"{self.heads} heads do not divide {self.base_channels * m} channels")

    @property
    def emb_channels(self) -> int:
        return self.time_channels or 4 * self.base_channels


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Transformer positional encoding), (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return nn.functional.pad(emb, (0, dim % 2))


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch, emb = cfg.base_channels, cfg.emb_channels
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.class_emb = nn.Embedding(cfg.num_classes + 1, emb) if cfg.num_classes else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        block = lambda cin, cout: ResBlock(cin, cout, emb, cfg.dropout)
        attend = lambda c, res: self.attention(c) if res in cfg.attention_resolutions else nn.Identity()
        self.down = nn.ModuleList()
        skips, res = [ch], cfg.image_size
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                self.down.append(nn.ModuleList([block(ch, cfg.base_channels * mult),
                                                attend(cfg.base_channels * mult, res)]))
                ch = cfg.base_channels * mult
                skips.append(ch)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([block(ch, ch), self.attention(ch), block(ch, ch)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.num_res_blocks + 1):
                out = cfg.base_channels * mult
                self.up.append(nn.ModuleList([block(ch + skips.pop(), out), attend(out, res)]))
                ch = out
            if level > 0:
                self.up.append(nn.ModuleList([Upsample(ch)]))
                res *= 2
        self.norm_out = GroupNorm(ch, act=True)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels or cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)   # start as the zero predictor (DDPM's init)
        nn.init.zeros_(self.conv_out.bias)

    def attention(self, channels: int) -> nn.Module:
        """Self-attention, or a transformer block with cross-attention in a text-conditioned U-Net."""
        if self.cfg.context_dim:
            return SpatialTransformer(channels, self.cfg.heads, self.cfg.context_dim)
        return Attention(channels, self.cfg.heads)

    def embed(self, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Time embedding plus class embedding (the null class when labels is None), (B, emb)."""
        e = self.time_mlp(timestep_embedding(t, self.cfg.base_channels))
        if self.class_emb is not None:
            if labels is None:
                labels = torch.full_like(t, self.cfg.num_classes)
            e = e + self.class_emb(labels)
        return e

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                context: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        emb = self.embed(t, labels)
        if self.cfg.context_dim and context is None:
            raise ValueError("a text-conditioned U-Net needs context=(token states, mask)")

        def attend(module: nn.Module, h: torch.Tensor) -> torch.Tensor:
            return module(h, *context) if isinstance(module, SpatialTransformer) else module(h)

        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            if isinstance(layer[0], Downsample):
                h = layer[0](h)
            else:
                h = attend(layer[1], layer[0](h, emb))
            hs.append(h)
        h = self.mid[2](attend(self.mid[1], self.mid[0](h, emb)), emb)
        for layer in self.up:
            if isinstance(layer[0], Upsample):
                h = layer[0](h)
            else:
                h = attend(layer[1], layer[0](torch.cat([h, hs.pop()], dim=1), emb))
        return self.conv_out(self.norm_out(h))
