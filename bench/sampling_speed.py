"""Wall time to sample 64 images: DDIM-50 against a few-step sampler, fp32 against bf16 autocast,
channels-last against contiguous (NCHW) tensors, for pixel and latent checkpoints.

    python bench/sampling_speed.py --checkpoint PIXEL.pt --checkpoint LATENT.pt --rounds 3

Each row is timed `--rounds` times after a 2-step warm-up draw of the same batch (rows
interleaved per round, so a slow spell of the machine hits every row alike); the median is
reported. The U-Net runs on the
CPU with 2 threads; class-conditional models sample with guidance (one batched pass of 2 x 64).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from sdlab.diffusion import SamplerConfig
from sdlab.pipeline import DiffusionPipeline
from sdlab.recipes.quality import draw_samples

SETTINGS = {"ddim-50": SamplerConfig(sampler="ddim", sample_steps=50),
            "dpmpp_2m-15": SamplerConfig(sampler="dpmpp_2m", sample_steps=15)}
ROWS = [("ddim-50", "fp32", "auto"), ("dpmpp_2m-15", "fp32", "auto"), ("dpmpp_2m-15", "bf16", "auto"),
        ("dpmpp_2m-15", "fp32", "nchw")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", required=True)
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    for path in args.checkpoint:
        pipe = DiffusionPipeline.from_checkpoint(path, torch.device("cpu"))
        w = args.guidance_scale if pipe.classes else 1.0
        times = {row: [] for row in ROWS}

        def draw(row, steps=None):
            setting, precision, layout = row
            pipe.layout = torch.contiguous_format if layout == "nchw" else None
            sampler = SETTINGS[setting] if steps is None else dataclasses.replace(SETTINGS[setting], sample_steps=steps)
            start = time.perf_counter()
            draw_samples(pipe, args.num_samples, balanced=True, guidance_scale=w, sampler=sampler, precision=precision)
            return time.perf_counter() - start

        for row in ROWS:
            draw(row, steps=2)                                 # warm-up: allocator, oneDNN kernels
        for _ in range(args.rounds):
            for row in ROWS:
                times[row].append(draw(row))
        layout = "channels-last" if pipe.sample_shape[-1] >= 16 else "NCHW"
        print(f"{path}: {pipe.sample_shape}, w = {w:g}, {args.num_samples} images; 'auto' layout = {layout}")
        for row, values in times.items():
            print(f"  {row[0]:12s} {row[1]:5s} {row[2]:5s} median {statistics.median(values):7.2f} s  "
                  f"({', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
