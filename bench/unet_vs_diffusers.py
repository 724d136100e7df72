"""U-Net training throughput: sdlab's UNet vs Hugging Face diffusers' UNet2DModel, same config.

Both networks are built from one preset (channels, multipliers, blocks per level, attention
levels, dropout) and trained in the same process on the same random batch: forward, MSE loss,
backward, AdamW step. Reports the median images/s over timed steps after warm-up, in fp32 and
in bf16 autocast. sdlab runs in the memory format its trainer uses (`trainer.memory_format`:
channels-last for fp32); diffusers runs as it comes (contiguous), and in fp32 also channels-last,
so the comparison is shown both ways.

    pip install -e ".[bench]"
    python bench/unet_vs_diffusers.py --preset cpu --steps 6
    python bench/unet_vs_diffusers.py --preset ddpm-cifar10 --steps 3
"""

from __future__ import annotations

import argparse

import torch
from timing import images_per_second, training_step

from sdlab.trainer import memory_format
from sdlab.unet import PRESETS, UNet, UNetConfig


def hf_unet(cfg: UNetConfig):
    """UNet2DModel with the same levels, widths, blocks, attention placement and dropout."""
    from diffusers import UNet2DModel

    levels = len(cfg.channel_mults)
    attn = [cfg.image_size // 2**i in cfg.attention_resolutions for i in range(levels)]
    widths = tuple(cfg.base_channels * m for m in cfg.channel_mults)
    return UNet2DModel(
        sample_size=cfg.image_size, in_channels=cfg.in_channels, out_channels=cfg.in_channels,
        block_out_channels=widths, layers_per_block=cfg.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=widths[-1] // cfg.heads if cfg.heads > 1 else None,
        dropout=cfg.dropout, norm_num_groups=32 if min(widths) % 32 == 0 else 8,
    )


def throughput(model, forward, precision: str, batch: int, size: int, steps: int, warmup: int,
               fmt: torch.memory_format = torch.contiguous_format) -> float:
    torch.manual_seed(0)
    model.to(memory_format=fmt)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    t = torch.randint(0, 1000, (batch,))
    target = torch.randn_like(x)
    step = training_step(model, lambda: (forward(model, x, t).float() - target).pow(2).mean(), precision)
    return images_per_second(step, batch, steps, warmup)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = UNetConfig(**PRESETS[args.preset])
    ours, theirs = UNet(cfg), hf_unet(cfg)
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6
    print(f"preset {args.preset}: sdlab {count(ours):.2f}M params, diffusers {count(theirs):.2f}M params; "
          f"batch {args.batch}, 32x32, {args.threads} threads, torch {torch.__version__}")
    run = lambda m, fwd, precision, fmt: throughput(m, fwd, precision, args.batch, cfg.image_size,
                                                    args.steps, args.warmup, fmt)
    for precision in ("fp32", "bf16"):
        a = run(ours, lambda m, x, t: m(x, t), precision, memory_format(precision))
        b = run(theirs, lambda m, x, t: m(x, t).sample, precision, torch.contiguous_format)
        line = f"{precision}: sdlab {a:.1f} img/s, diffusers {b:.1f} img/s, ratio {a / b:.2f}x"
        if precision == "fp32":
            c = run(theirs, lambda m, x, t: m(x, t).sample, precision, torch.channels_last)
            line += f"; diffusers channels-last {c:.1f} img/s, ratio {a / c:.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
