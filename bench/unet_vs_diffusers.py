"""U-Net training throughput: sdlab's UNet vs Hugging Face diffusers' UNet2DModel, same config.

Both networks are built from one preset (channels, multipliers, blocks per level, attention
levels, dropout) and trained in the same process on the same random batch: forward, MSE loss,
backward, AdamW step (fused, as the trainer builds it). Each round times every network in turn
(median images/s over timed steps after warm-up), so a slow spell of the machine hits both;
the ratio reported is the median of the per-round ratios. sdlab runs in the memory format its
trainer uses on CPU (`runtime.memory_format`: channels-last); diffusers runs as it comes
(contiguous) and, in fp32, also channels-last, so the comparison is shown both ways.

    pip install -e ".[bench]"
    python bench/unet_vs_diffusers.py --preset cpu --steps 6 --rounds 3
    python bench/unet_vs_diffusers.py --preset ddpm-cifar10 --steps 3 --rounds 3
    python bench/unet_vs_diffusers.py --device cuda --batch 128 --steps 20 --warmup 5   # on a GPU
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import images_per_second, training_step

from sdlab.runtime import memory_format
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


def timed_step(model, forward, precision: str, batch: int, size: int, fmt: torch.memory_format,
               device: torch.device):
    """A training step of `model` on a fixed random batch in memory format `fmt` on `device`."""
    torch.manual_seed(0)
    model.to(device, memory_format=fmt)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    t = torch.randint(0, 1000, (batch,), device=device)
    target = torch.randn_like(x)
    return training_step(model, lambda: (forward(model, x, t).float() - target).pow(2).mean(), precision, device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per network per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = UNetConfig(**PRESETS[args.preset])
    ours = lambda m, x, t: m(x, t)
    theirs = lambda m, x, t: m(x, t).sample
    contenders = {"sdlab": (UNet, ours, memory_format(device, cfg.image_size)),
                  "diffusers": (hf_unet, theirs, torch.contiguous_format),
                  "diffusers channels-last": (hf_unet, theirs, torch.channels_last)}
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6
    print(f"preset {args.preset}: sdlab {count(UNet(cfg)):.2f}M params, diffusers {count(hf_unet(cfg)):.2f}M "
          f"params; batch {args.batch}, 32x32, {args.device}"
          f"{f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else f', {args.threads} threads'}, "
          f"{args.rounds} rounds of {args.steps} steps, torch {torch.__version__}")
    for precision in args.precisions:
        names = list(contenders) if precision == "fp32" else ["sdlab", "diffusers"]
        steps = {name: timed_step(build(cfg), fwd, precision, args.batch, cfg.image_size, fmt, device)
                 for name, (build, fwd, fmt) in ((n, contenders[n]) for n in names)}
        rates = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names:
                rates[name].append(images_per_second(steps[name], args.batch, args.steps,
                                                     args.warmup if r == 0 else 1))
        print(f"{precision} img/s per round: " + "; ".join(f"{k} {[round(v, 1) for v in vs]}" for k, vs in rates.items()))
        parts = []
        for name in names[1:]:
            ratios = [a / b for a, b in zip(rates["sdlab"], rates[name])]
            parts.append(f"{name} {statistics.median(rates[name]):.1f} img/s, ratio "
                         f"{statistics.median(ratios):.2f}x ({', '.join(f'{q:.2f}' for q in ratios)})")
        print(f"{precision}: sdlab {statistics.median(rates['sdlab']):.1f} img/s; " + "; ".join(parts), flush=True)


if __name__ == "__main__":
    main()
