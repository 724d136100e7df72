"""Cost of pixel vs latent diffusion at the same U-Net width, measured in one run.

Pixel: the `cpu` U-Net preset on 3x32x32 images. Latent: the same widths, levels and blocks on
4x8x8 VAE latents (attention resolutions divided by the VAE's factor 4). Reports training
images/s (forward, loss, backward, AdamW step; median over timed steps) at each batch size, both
sides at the same batch, alternating pixel and latent in rounds so a slow spell of the machine
hits both; then the time to sample 64 images with DDIM-50 (the latent one including the VAE
decoder), and writes a bar chart. Small latent maps leave the CPU underused at small batches,
so the saving grows with the batch; the last line compares each side at its cheapest batch.

    python bench/latent_vs_pixel.py [--precision bf16] [--batches 64 128 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from timing import images_per_second, training_step

from sdlab.diffusion import DiffusionConfig, diffusion_loss
from sdlab.pipeline import DiffusionPipeline
from sdlab.runtime import autocast, memory_format
from sdlab.unet import PRESETS, UNet, UNetConfig
from sdlab.vae import VAE, VAEConfig
from sdlab.visualize import plot_bar_panels


def train_step(model, shape, precision, batch):
    """A training step on a fixed random batch, in the memory format the trainer uses on CPU."""
    fmt = memory_format(torch.device("cpu"), shape[-1])
    model.to(memory_format=fmt)
    schedule = DiffusionConfig().make_schedule()
    x = torch.randn(batch, *shape).contiguous(memory_format=fmt)
    return training_step(model, lambda: diffusion_loss(model, schedule, x, DiffusionConfig())["loss"], precision)


def sample_seconds(pipe, precision, num=64, steps=50) -> float:
    with autocast(torch.device("cpu"), precision):
        pipe(2, sampler="ddim", sample_steps=2)                         # warm-up
        start = time.perf_counter()
        pipe(num, sampler="ddim", sample_steps=steps, generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side, batch and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/figures/pixel_vs_latent_cost.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pixel_cfg = UNetConfig(**PRESETS["cpu"])
    latent_cfg = dataclasses.replace(pixel_cfg, in_channels=4, image_size=8,
                                     attention_resolutions=tuple(r // 4 for r in pixel_cfg.attention_resolutions))
    models = {"pixel": (UNet(pixel_cfg), (3, 32, 32)), "latent": (UNet(latent_cfg), (4, 8, 8))}
    print(f"U-Net preset cpu, {args.precision}, {args.threads} threads, torch {torch.__version__}; "
          f"training ms/img, median of {args.rounds} rounds of {args.steps} steps")
    ms = {}
    for batch in args.batches:
        steps = {kind: train_step(model, shape, args.precision, batch) for kind, (model, shape) in models.items()}
        rounds = {kind: [] for kind in models}
        for r in range(args.rounds):
            for kind, step in steps.items():
                rounds[kind].append(1000 / images_per_second(step, batch, args.steps, 2 if r == 0 else 1))
        ratios = [p / q for p, q in zip(rounds["pixel"], rounds["latent"])]
        ms[batch] = {kind: statistics.median(v) for kind, v in rounds.items()}
        print(f"batch {batch:>4}: pixel {ms[batch]['pixel']:.2f} ms/img, latent {ms[batch]['latent']:.2f} ms/img, "
              f"latent {statistics.median(ratios):.1f}x cheaper ({', '.join(f'{q:.1f}' for q in ratios)})", flush=True)
    best = {kind: min(args.batches, key=lambda b: ms[b][kind]) for kind in models}
    print(f"each at its cheapest batch: pixel {ms[best['pixel']]['pixel']:.2f} ms/img (batch {best['pixel']}), "
          f"latent {ms[best['latent']]['latent']:.2f} ms/img (batch {best['latent']}), latent "
          f"{ms[best['pixel']]['pixel'] / ms[best['latent']]['latent']:.1f}x cheaper")
    schedule = DiffusionConfig().make_schedule()
    vae = VAE(VAEConfig(base_channels=32)).eval()
    seconds = {"pixel": sample_seconds(DiffusionPipeline(models["pixel"][0].eval(), schedule), args.precision),
               "latent": sample_seconds(DiffusionPipeline(models["latent"][0].eval(), schedule, vae=vae), args.precision)}
    print(f"DDIM-50 x 64 images: pixel {seconds['pixel']:.1f} s, latent {seconds['latent']:.1f} s "
          f"({seconds['pixel'] / seconds['latent']:.1f}x faster)")
    names = [f"{kind}\nb{batch}" for batch in args.batches for kind in models]
    values = [ms[batch][kind] for batch in args.batches for kind in models]
    plot_bar_panels([(names, values, "ms / image", "training, batch b"),
                     (["pixel", "latent"], [seconds["pixel"], seconds["latent"]], "seconds", "DDIM-50, 64 images")],
                    args.out, title=f"pixel (3x32x32) vs latent (4x8x8) diffusion, same U-Net, {args.precision}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
