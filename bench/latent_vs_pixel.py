"""Cost of pixel vs latent diffusion at the same U-Net width, measured in one run.

Pixel: the `cpu` U-Net preset on 3x32x32 images. Latent: the same widths, levels and blocks on
4x8x8 VAE latents (attention resolutions divided by the VAE's factor 4). Reports training
images/s (forward, loss, backward, AdamW step; median over timed steps) and the time to sample
64 images with DDIM-50 (the latent one including the VAE decoder), and writes a bar chart.

    python bench/latent_vs_pixel.py [--precision bf16] [--out docs/figures/pixel_vs_latent_cost.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from timing import images_per_second, training_step

from sdlab.diffusion import DiffusionConfig, diffusion_loss
from sdlab.pipeline import DiffusionPipeline
from sdlab.trainer import autocast, memory_format
from sdlab.unet import PRESETS, UNet, UNetConfig
from sdlab.vae import VAE, VAEConfig
from sdlab.visualize import plot_bars


def train_rate(model, shape, precision, batch, steps, warmup=2) -> float:
    """Training images/s, in the memory format the trainer uses on CPU."""
    fmt = memory_format(torch.device("cpu"), shape[-1])
    model.to(memory_format=fmt)
    schedule = DiffusionConfig().make_schedule()
    x = torch.randn(batch, *shape).contiguous(memory_format=fmt)
    step = training_step(model, lambda: diffusion_loss(model, schedule, x, DiffusionConfig())["loss"], precision)
    return images_per_second(step, batch, steps, warmup)


def sample_seconds(pipe, precision, num=64, steps=50) -> float:
    with autocast(torch.device("cpu"), precision):
        pipe(2, sampler="ddim", steps=2)                                # warm-up
        start = time.perf_counter()
        pipe(num, sampler="ddim", steps=steps, generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/figures/pixel_vs_latent_cost.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pixel_cfg = UNetConfig(**PRESETS["cpu"])
    latent_cfg = dataclasses.replace(pixel_cfg, in_channels=4, image_size=8,
                                     attention_resolutions=tuple(r // 4 for r in pixel_cfg.attention_resolutions))
    pixel, latent = UNet(pixel_cfg), UNet(latent_cfg)
    vae = VAE(VAEConfig(base_channels=32)).eval()
    schedule = DiffusionConfig().make_schedule()
    rates = {"pixel": train_rate(pixel, (3, 32, 32), args.precision, args.batch, args.steps),
             "latent": train_rate(latent, (4, 8, 8), args.precision, args.batch, args.steps)}
    seconds = {"pixel": sample_seconds(DiffusionPipeline(pixel.eval(), schedule), args.precision),
               "latent": sample_seconds(DiffusionPipeline(latent.eval(), schedule, vae=vae), args.precision)}
    print(f"U-Net preset cpu, {args.precision}, batch {args.batch}, {args.threads} threads, torch {torch.__version__}")
    for kind in ("pixel", "latent"):
        print(f"{kind:>6}: train {rates[kind]:.1f} img/s ({1000 / rates[kind]:.2f} ms/img); "
              f"DDIM-50 x 64 images {seconds[kind]:.1f} s")
    print(f"latent is {rates['latent'] / rates['pixel']:.1f}x cheaper to train per image and "
          f"{seconds['pixel'] / seconds['latent']:.1f}x faster to sample")
    plot_bars(["train ms/img pixel", "train ms/img latent", "DDIM-50 s pixel", "DDIM-50 s latent"],
              [1000 / rates["pixel"], 1000 / rates["latent"], seconds["pixel"], seconds["latent"]],
              args.out, "cost", title=f"pixel (3x32x32) vs latent (4x8x8) diffusion, same U-Net, {args.precision}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
