"""What data parallelism costs on this machine: one process vs a 2-process gloo job training the
cpu U-Net on 32x32 images with the same global batch, through the real Trainer.

    python bench/data_parallel.py [--batch-size 32] [--steps 30] [--rounds 3]

Rows (each a fresh process or job, run one after another, never two at once):
  1 process, 2 threads, batch 2B    what `train_diffusion.py` does by default
  1 process, 1 thread,  batch B     one rank's share of the work alone (no communication)
  2 processes x 1 thread, batch B   `torchrun --nproc_per_node 2`: global batch 2B

Images/s is the global batch over the median time between consecutive training steps (forward,
the trainer's per-step agreement, backward with DDP's gradient all-reduce, AdamW, EMA). The
all-reduce row times `all_reduce` of one tensor as large as all the gradients in the 2-process
job: the communication DDP adds to every step (it overlaps part of it with backward).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.multiprocessing as mp

from sdlab.data import BatchLoader, make_synthetic
from sdlab.diffusion import DiffusionConfig, diffusion_loss
from sdlab.distributed import setup
from sdlab.trainer import TrainConfig, Trainer
from sdlab.unet import PRESETS, UNet, UNetConfig


def measure(rank: int, world: int, threads: int, batch: int, steps: int, port: int, results) -> None:
    """Train `steps` steps (rank of a `world` job); rank 0 puts (step seconds, all-reduce seconds)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(threads)
    dist, device = setup(torch.device("cpu"))
    torch.manual_seed(0)
    model = UNet(UNetConfig(**PRESETS["cpu"], image_size=32))
    schedule, cfg = DiffusionConfig().make_schedule(), DiffusionConfig()
    stamps = []

    def loss_fn(net, images, labels, generator=None, step=None):
        if step is not None:
            stamps.append(time.perf_counter())
        return diffusion_loss(net, schedule, images, cfg, generator=generator)

    data = make_synthetic(batch * world * (steps + 1), 32)
    loaders = [BatchLoader(part, batch, shuffle=True, hflip=True, drop_last=True, rank=rank, world=world)
               for part in (data, make_synthetic(batch * world, 32, seed=1))]
    with tempfile.TemporaryDirectory() as tmp:
        train = TrainConfig(epochs=1, max_steps=steps + 1, save_dir=tmp, device="cpu", ema_decay=0.999)
        Trainer(model, loss_fn, *loaders, train, run_config={"kind": "bench"}, device=device, dist=dist).fit()
    step_seconds = statistics.median(b - a for a, b in zip(stamps[2:], stamps[3:]))   # 2 warm-up steps
    reduce_seconds = 0.0
    if world > 1:
        grads = torch.zeros(sum(p.numel() for p in model.parameters()))
        times = []
        for _ in range(10):
            start = time.perf_counter()
            dist.sum(grads)
            times.append(time.perf_counter() - start)
        reduce_seconds = statistics.median(times[2:])
    if rank == 0:
        results.put((step_seconds, reduce_seconds))


def run(world: int, threads: int, batch: int, steps: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(measure, args=(world, threads, batch, steps, port, results), nprocs=world,
                       start_method="spawn")
    return results.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32, help="B: images per process and step")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    b = args.batch_size
    rows = {f"1 process, 2 threads, batch {2 * b}": (1, 2, 2 * b),
            f"1 process, 1 thread, batch {b}": (1, 1, b),
            f"2 processes x 1 thread, batch {b} each": (2, 1, b)}
    found = {name: [] for name in rows}
    reduce = []
    for _ in range(args.rounds):
        for name, (world, threads, batch) in rows.items():
            seconds, reduce_seconds = run(world, threads, batch, args.steps)
            found[name].append(batch * world / seconds)
            if world > 1:
                reduce.append(reduce_seconds)
    for name, values in found.items():
        print(f"{name:>40}: {statistics.median(values):6.1f} img/s  (rounds: "
              f"{', '.join(f'{v:.1f}' for v in values)})")
    params = sum(p.numel() for p in UNet(UNetConfig(**PRESETS["cpu"], image_size=32)).parameters())
    print(f"{'gradient all-reduce (gloo, 2 processes)':>40}: {1e3 * statistics.median(reduce):6.1f} ms per step "
          f"for {params / 1e6:.2f}M float32 values ({4 * params / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
