"""Data-parallel training on several processes, launched by torchrun.

    torchrun --nproc_per_node 4 diffusers/train_diffusion.py --batch-size 32 ...

torchrun starts one process per device and sets RANK, LOCAL_RANK and WORLD_SIZE; `setup` reads
them, joins the process group (NCCL on CUDA, gloo on the CPU) and gives each process the GPU of
its LOCAL_RANK. Without torchrun WORLD_SIZE is unset and everything here is a no-op on one
process. The rules the trainer follows with several processes:

- each process trains on its own rows of every global batch (batch size per process x world
  size images, cut from one permutation per epoch), and DistributedDataParallel averages the
  gradients, so a step is the step one process would take on the whole global batch;
- random draws of the loss come from a generator in the same state everywhere
  (`sdlab.randomness`), so an image's noise does not depend on the world size;
- only rank 0 (`Dist.is_main`) writes: checkpoints, TensorBoard, logs, sample grids, figures;
- whatever decides whether to stop (a signal, non-finite values, the time limit, a user error
  found by rank 0) is agreed by all processes before anyone acts on it.
"""

from __future__ import annotations

import atexit
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as torch_dist
from torch import nn

from .config import ConfigError
from .errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank (0 .. world - 1) and world size (1: no job)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the process that writes files and prints."""
        return self.rank == 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of `values` over all processes (in place; returned)."""
        if self.world > 1:
            torch_dist.all_reduce(values)
        return values

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every process (small picklable objects)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch_dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only and return its result on every process; a UserError raised
        there is raised on every process (same message and exit code), so all stop together."""
        if self.world == 1:
            return fn()
        outcome, error = [None, None], None
        if self.is_main:
            try:
                outcome[0] = fn()
            except UserError as err:
                error = err
                outcome[1] = (str(err), err.exit_code)
        torch_dist.broadcast_object_list(outcome, src=0)
        if error is not None:
            raise error
        if outcome[1] is not None:
            failure = UserError(outcome[1][0])
            failure.exit_code, failure.agreed = outcome[1][1], True
            raise failure
        return outcome[0]

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block first (building caches), the others after it has finished."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """`model` in DistributedDataParallel (gradients averaged over processes), or as it is."""
        if self.world == 1:
            return model
        ids = [device.index] if device.type == "cuda" else None
        # A channels-last 1x1 convolution weight and its gradient lie the same way in memory but
        # differ in the strides of their size-1 dims, which DDP's layout check reports every step.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def launched_rank() -> int:
    """The rank torchrun gave this process (0 without torchrun), known before `setup`."""
    return int(os.environ.get("RANK", "0"))


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the torchrun job if there is one; returns this process's Dist and device.

    On CUDA each process takes the GPU of its LOCAL_RANK (so --device must be auto or cuda, not
    cuda:N). The process group is created once per process and closed when it exits.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError("device", f"{device}: under torchrun each process uses the GPU of its "
                                        "LOCAL_RANK; pass --device cuda (or auto)")
        if local >= torch.cuda.device_count():
            raise ConfigError("device", f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) "
                                        "here; start at most that many processes per node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError("device", f"{device}: torchrun training runs on CUDA (NCCL) or the CPU (gloo)")
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                      rank=rank, world_size=world,
                                      device_id=device if device.type == "cuda" else None)
        atexit.register(torch_dist.destroy_process_group)
    return Dist(rank, world), device
