"""VAE training throughput in fp32 and bf16 autocast: forward + loss + backward + AdamW step on a
random batch in the memory format the trainer uses on CPU, median images/s over timed steps
after warm-up.

    python bench/vae_throughput.py [--batch 128] [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch
from timing import images_per_second, training_step

from sdlab.runtime import memory_format
from sdlab.vae import VAE, VAEConfig, VAELossConfig, vae_loss

CONFIGS = {
    "base 32 (CPU default)": VAEConfig(base_channels=32),
    "base 64": VAEConfig(base_channels=64),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fmt = memory_format(torch.device("cpu"), 32)
    x = (torch.rand(args.batch, 3, 32, 32) * 2 - 1).contiguous(memory_format=fmt)
    for name, cfg in CONFIGS.items():
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            vae = VAE(cfg).to(memory_format=fmt)
            step = training_step(vae, lambda: vae_loss(vae, x, VAELossConfig())["loss"], precision)
            rate = images_per_second(step, args.batch, args.steps, args.warmup)
            params = sum(p.numel() for p in vae.parameters()) / 1e6
            print(f"{name} ({params:.2f}M) {precision}: {rate:.0f} img/s")


if __name__ == "__main__":
    main()
