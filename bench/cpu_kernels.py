"""The CPU measurements behind the trainer's choices (BENCHMARKS.md, "What made the difference").

Median milliseconds of forward + backward (or one optimizer step) on random tensors, 2 threads:
    conv       3x3 conv 64->64 on 64x64x32x32 bf16, NCHW vs NHWC       (runtime.memory_format)
    groupnorm  GroupNorm + SiLU in bf16: native NCHW, native NHWC, ours  (kernels.groupnorm.GroupNormNHWC)
    adamw      one AdamW step of the cpu U-Net, foreach vs fused          (runtime.fused_optimizer)
    attention  self-attention over 256 tokens of 256 channels (ddpm-cifar10 at 16x16), bf16:
               SDPA default kernel, SDPA math kernel, two matmuls      (kernels.attention.attention_matmuls)
    tiny conv  3x3 conv 128->128 at 2x2 and 4x4 bf16 (latent U-Net levels): native, ours (kernels.conv.TinyMapConv)
and the U-Net's forward + backward GFLOP per image on pixels (3x32x32) and latents (4x8x8).

    python bench/cpu_kernels.py [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from timing import median_seconds
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sdlab.kernels.groupnorm import GroupNorm
from sdlab.kernels.attention import attention_matmuls
from sdlab.kernels.conv import TinyMapConv
from sdlab.unet import PRESETS, UNet, UNetConfig

NHWC = torch.channels_last


def median_ms(fn, repeats: int = 15, warmup: int = 3) -> float:
    return 1000 * median_seconds(fn, repeats, warmup)


def conv_ms(shape, out_channels: int, fmt: torch.memory_format, tiny_map: bool = False) -> float:
    x = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(out_channels, shape[1], 3, 3).to(torch.bfloat16).contiguous(memory_format=fmt).requires_grad_()
    grad = torch.randn(shape[0], out_channels, *shape[2:]).to(torch.bfloat16).contiguous(memory_format=fmt)
    if tiny_map:    # kernels.conv.Conv2d's path on maps of 16 pixels or fewer
        return median_ms(lambda: TinyMapConv.apply(x, w, None, (1, 1), (1, 1)).backward(grad))
    return median_ms(lambda: F.conv2d(x, w, padding=1).backward(grad))


def group_norm_ms(shape, fmt: torch.memory_format, ours: bool) -> float:
    norm = GroupNorm(shape[1], act=True)
    x = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=fmt).requires_grad_()
    grad = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=fmt)
    if ours:        # channels-last bf16 on CPU: GroupNorm.forward takes the GroupNormNHWC path
        return median_ms(lambda: norm(x).backward(grad))
    native = lambda: F.silu(F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps))
    return median_ms(lambda: native().backward(grad))


def attention_ms(kind: str, batch: int = 64, tokens: int = 256, channels: int = 256) -> float:
    """q, k, v laid out as Attention makes them: views of one (B, N, 3C) projection."""
    qkv = torch.randn(batch, tokens, 3 * channels).to(torch.bfloat16).requires_grad_()
    grad = torch.randn(batch, 1, tokens, channels).to(torch.bfloat16)

    def step():
        q, k, v = qkv.view(batch, tokens, 3, 1, channels).permute(2, 0, 3, 1, 4).unbind(0)
        if kind == "matmuls":
            out = attention_matmuls(q, k, v)
        else:
            with sdpa_kernel(SDPBackend.MATH) if kind == "math" else nullcontext():
                out = F.scaled_dot_product_attention(q, k, v)
        out.backward(grad)

    return median_ms(step, repeats=7)


def adamw_ms(fused: bool) -> float:
    model = UNet(UNetConfig(**PRESETS["cpu"]))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    return median_ms(opt.step)


def gflop_per_image(cfg: UNetConfig, batch: int = 8) -> float:
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    with FlopCounterMode(display=False) as counter:
        UNet(cfg)(x, torch.zeros(batch, dtype=torch.long)).sum().backward()
    return counter.get_total_flops() / batch / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads; median ms of forward + backward")
    nchw, nhwc = (conv_ms((64, 64, 32, 32), 64, fmt) for fmt in (torch.contiguous_format, NHWC))
    print(f"conv 3x3 64->64, 64x64x32x32 bf16: NCHW {nchw:.2f}, NHWC {nhwc:.2f}")
    for shape in ((64, 64, 32, 32), (64, 128, 16, 16)):
        native_nchw = group_norm_ms(shape, torch.contiguous_format, ours=False)
        native_nhwc = group_norm_ms(shape, NHWC, ours=False)
        ours = group_norm_ms(shape, NHWC, ours=True)
        print(f"GroupNorm + SiLU {'x'.join(map(str, shape))} bf16: native NCHW {native_nchw:.2f}, "
              f"native NHWC {native_nhwc:.2f}, GroupNormNHWC {ours:.2f}")
    times = {kind: attention_ms(kind) for kind in ("default", "math", "matmuls")}
    print("attention, 64 x 256 tokens x 256 channels bf16: " + ", ".join(f"SDPA {k} {v:.2f}" if k != "matmuls"
          else f"attention_matmuls {v:.2f}" for k, v in times.items()))
    print(f"AdamW step, cpu U-Net (4.44M): foreach {adamw_ms(False):.2f}, fused {adamw_ms(True):.2f}")
    for side in (2, 4):
        native, ours = (conv_ms((64, 128, side, side), 128, torch.contiguous_format, tiny) for tiny in (False, True))
        print(f"conv 3x3 128->128, 64x128x{side}x{side} bf16: native {native:.2f}, TinyMapConv {ours:.2f}")
    pixel = UNetConfig(**PRESETS["cpu"])
    latent = dataclasses.replace(pixel, in_channels=4, image_size=8, attention_resolutions=(2,))
    print(f"U-Net forward + backward per image: pixel {gflop_per_image(pixel):.2f} GFLOP, "
          f"latent {gflop_per_image(latent):.2f} GFLOP")


if __name__ == "__main__":
    main()
