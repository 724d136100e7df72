"""Data-pipeline throughput for CIFAR-sized tensors: uint8 (50000, 3, 32, 32) in memory ->
shuffled, flipped float batches in [-1, 1]. Reports the median images/s over several epochs.

    python bench/data_throughput.py [--batch 128] [--epochs 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sdlab.data import BatchLoader, ImageSet


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=50_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (args.images,), generator=g), tuple("0123456789"))
    loader = BatchLoader(data, args.batch, shuffle=True, hflip=True, drop_last=True, seed=0)
    rates = []
    for epoch in range(args.epochs + 1):
        start, n = time.perf_counter(), 0
        for x, y in loader.epoch(epoch):
            n += x.shape[0]
        if epoch:  # the first epoch warms up the allocator
            rates.append(n / (time.perf_counter() - start))
    print(f"{args.images} images, batch {args.batch}, shuffle + hflip, {args.threads} threads: "
          f"median {statistics.median(rates):,.0f} img/s (min {min(rates):,.0f}, max {max(rates):,.0f}) "
          f"over {args.epochs} epochs")


if __name__ == "__main__":
    main()
