"""Timing helper shared by the benchmarks: median images/s of a training step."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from sdlab.trainer import autocast, fused_optimizer


def training_step(model: torch.nn.Module, loss: Callable[[], torch.Tensor], precision: str) -> Callable[[], None]:
    """One AdamW training step of `model` on `loss()` under the given autocast precision.

    The optimizer is built as the trainer builds it (fused where torch has the kernel)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused_optimizer(model))

    def step() -> None:
        with autocast(torch.device("cpu"), precision):
            value = loss()
        value.float().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def images_per_second(step: Callable[[], None], batch: int, steps: int, warmup: int) -> float:
    """Median images/s of `step()` (one step on `batch` images) over `steps` calls after `warmup`."""
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)
