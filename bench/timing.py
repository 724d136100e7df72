"""Timing helpers shared by the benchmarks: median wall time, median images/s of a training step."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from sdlab.runtime import autocast, fused_optimizer


def training_step(model: torch.nn.Module, loss: Callable[[], torch.Tensor], precision: str,
                  device: torch.device = torch.device("cpu")) -> Callable[[], None]:
    """One AdamW training step of `model` (on `device`) on `loss()` under the given autocast
    precision; on CUDA it waits for the GPU, so a timer around it measures the step.

    The optimizer is built as the trainer builds it (fused where torch has the kernel)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused_optimizer(model))

    def step() -> None:
        with autocast(device, precision):
            value = loss()
        value.float().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def images_per_second(step: Callable[[], None], batch: int, steps: int, warmup: int) -> float:
    """Median images/s of `step()` (one step on `batch` images) over `steps` calls after `warmup`."""
    return batch / median_seconds(step, steps, warmup)
