"""Data parallelism: a 2-process gloo job trains what one process trains on the same global
batch, its checkpoints resume on one process, and only rank 0 writes.

The jobs run as real processes (torch.multiprocessing, one thread each, the environment torchrun
sets), and one test launches the command line with torchrun itself.
"""

import os
import signal
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

from sdlab.checkpoint import load_checkpoint
from sdlab.data import BatchLoader, DataConfig, make_synthetic
from sdlab.diffusion import DiffusionConfig, SamplerConfig
from sdlab.diffusion.guidance import GuidanceConfig
from sdlab.distributed import Dist
from sdlab.randomness import NoiseSource
from sdlab.recipes import DiffusionRun, train_diffusion
from sdlab.trainer import TrainConfig, TrainingStopped
from sdlab.unet import UNetConfig

from conftest import ROOT, run_script

BATCH = 4            # per process; the one-process runs use 2 x BATCH


def tiny_run(save_dir, batch_size, **train) -> DiffusionRun:
    """A class-conditional pixel run; dropout 0, as dropout masks are each process's own; fp32,
    as the runs are compared to 1e-5 (`auto` would be bf16 on a CPU that runs it natively)."""
    return DiffusionRun(
        data=DataConfig(dataset="synthetic", synthetic_size=40, image_size=8, batch_size=batch_size),
        train=TrainConfig(**{"epochs": 2, "save_dir": str(save_dir), "device": "cpu", "lr": 1e-3, "precision": "fp32",
                             "ema_decay": 0.9, "seed": 3, "log_every": 1, **train}),
        unet=UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(4,), dropout=0.0),
        diffusion=DiffusionConfig(num_timesteps=20),
        sampler=SamplerConfig(num_samples=4, sample_steps=2),
        guidance=GuidanceConfig(class_cond=True, cond_drop_prob=0.25))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record_writes(root: str) -> list:
    """Every file or folder this process creates, changes or deletes under `root` (audit hook)."""
    written = []
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def hook(event, args):
        if event in ("open", "os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate") \
                and str(args[0]).startswith(root):
            if event == "open" and not (any(c in (args[1] or "") for c in "wax+") or
                                        (args[1] is None and args[2] & writing)):
                return
            written.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    return written


def job_worker(rank: int, world: int, port: int, jobs: list, root: str, results) -> None:
    """One process of a torchrun-like job: trains each of `jobs` (DiffusionRun args), then puts
    (rank, outcome, files written) on `results`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    written = record_writes(root)
    outcome = "done"
    try:
        for kind, args in jobs:
            if kind == "recipe":
                train_diffusion(tiny_run(*args[:2], **args[2]))
            else:
                stop_trainer_on_rank_1(*args)
    except TrainingStopped as err:
        outcome = f"stopped {err.exit_code}"
    results.put((rank, outcome, written))


def run_job(jobs: list, root, world: int = 2) -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(job_worker, args=(world, free_port(), jobs, str(root), results), nprocs=world,
                       start_method="spawn")
    return {rank: (outcome, written) for rank, outcome, written in (results.get() for _ in range(world))}


def assert_same_weights(a: dict, b: dict, atol=1e-5) -> None:
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.allclose(tensor, b[key][name], atol=atol, rtol=1e-4), f"{key}.{name}"


# ---------------------------------------------------------------- pieces


def test_noise_for_a_shard_is_the_rows_of_the_global_draw():
    x = torch.zeros(6, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    whole = NoiseSource(torch.Generator().manual_seed(1))
    reference = (whole.integers(10, 6, x.device), whole.normal(x), whole.uniform(6, x.device))
    for start, size in ((0, 2), (2, 3), (5, 1)):
        part = NoiseSource(torch.Generator().manual_seed(1), start, total=6)
        rows = x[start:start + size]
        drawn = (part.integers(10, size, x.device), part.normal(rows), part.uniform(size, x.device))
        for got, want in zip(drawn, reference):
            assert torch.equal(got, want[start:start + size])
        assert drawn[1].is_contiguous(memory_format=torch.channels_last)


def test_shards_of_each_global_batch_are_disjoint_and_make_up_the_one_process_batch():
    data = make_synthetic(22, 4)
    single = BatchLoader(data, 6, shuffle=True, hflip=True, drop_last=False, seed=5)
    shards = [BatchLoader(data, 3, shuffle=True, hflip=True, drop_last=False, seed=5, rank=r, world=2)
              for r in range(2)]
    assert len(single) == len(shards[0]) == len(shards[1]) == 4
    for b, (images, labels) in enumerate(single.epoch(1)):
        parts = [list(shard.epoch(1, b))[0] for shard in shards]
        assert torch.equal(torch.cat([p[0] for p in parts]), images)
        assert torch.equal(torch.cat([p[1] for p in parts]), labels)
        assert [shard.rows(b) for shard in shards] == [(0, len(images)), (3, len(images))]
    assert [len(list(shard.epoch(0, 3))[0][0]) for shard in shards] == [3, 1]    # 22 = 3 x 6 + 3 + 1


# ---------------------------------------------------------------- jobs


def test_two_processes_train_what_one_trains_and_their_checkpoint_resumes_on_one(tmp_path):
    jobs = [("recipe", (tmp_path / "two", BATCH, {})),
            ("recipe", (tmp_path / "two-first-epoch", BATCH, {"epochs": 1}))]
    ranks = run_job(jobs, tmp_path)
    assert ranks[0][0] == ranks[1][0] == "done"
    assert ranks[1][1] == [] and ranks[0][1]                  # only rank 0 wrote anything

    train_diffusion(tiny_run(tmp_path / "one", 2 * BATCH))
    two, one = load_checkpoint(tmp_path / "two" / "last.pt"), load_checkpoint(tmp_path / "one" / "last.pt")
    assert two["step"] == one["step"] == 10 and len(two["rank_rng"]) == 2
    assert_same_weights(two, one)
    assert two["history"][-1]["val/loss"] == pytest.approx(one["history"][-1]["val/loss"], rel=1e-4)
    assert two["history"][-1]["train/loss"] == pytest.approx(one["history"][-1]["train/loss"], rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())

    train_diffusion(tiny_run(tmp_path / "two-first-epoch", 2 * BATCH, resume="last"))
    assert_same_weights(load_checkpoint(tmp_path / "two-first-epoch" / "last.pt"), one)


def stop_trainer_on_rank_1(save_dir: str) -> None:
    """A toy run in which only rank 1 receives SIGINT, at step 3."""
    from torch import nn

    from sdlab.distributed import setup
    from sdlab.trainer import Trainer

    dist, device = setup(torch.device("cpu"))
    torch.manual_seed(0)
    model = nn.Conv2d(3, 3, 3, padding=1)
    loaders = [BatchLoader(make_synthetic(n, 8, seed=n), 4, shuffle=True, hflip=False, drop_last=True,
                           rank=dist.rank, world=dist.world) for n in (64, 8)]
    def loss_fn(net, images, labels, generator=None, step=None):
        if step == 3 and dist.rank == 1:
            os.kill(os.getpid(), signal.SIGINT)
        noisy = images + NoiseSource.of(generator).normal(images)
        return {"loss": (net(noisy) - images).pow(2).mean()}

    trainer = Trainer(model, loss_fn, *loaders, TrainConfig(epochs=3, save_dir=save_dir, device="cpu"),
                      run_config={"kind": "toy"}, device=device, dist=dist)
    trainer.fit()


def test_a_signal_to_one_process_stops_all_with_one_checkpoint(tmp_path):
    ranks = run_job([("toy", (str(tmp_path / "run"),))], tmp_path)
    assert ranks[0][0] == ranks[1][0] == "stopped 130"
    assert ranks[1][1] == []
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (state["epoch"], state["step"]) == (0, 4)          # the step under way when it came


def test_torchrun_launches_the_command_line(tmp_path):
    args = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
            ROOT / "diffusers" / "train_diffusion.py", "--dataset", "synthetic", "--synthetic-size", "40",
            "--imgsz", "8", "--batch", "4", "--epochs", "1", "--device", "cpu", "--hidden-dim", "8",
            "--down-scale", "1,2", "--attention-resolutions", "4", "--noise-steps", "20",
            "--num-samples", "4", "--sample-steps", "2", "--save-dir", tmp_path / "run"]
    done = run_script(args, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "data parallel: 2 processes x batch 4 = 8 images per step" in done.stdout + done.stderr
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 5 and state["global_batch"] == 8          # 40 images / 8 per step
    assert (tmp_path / "run" / "samples" / "epoch_0001.png").exists()


def test_one_process_is_not_a_job():
    dist = Dist()
    assert dist.is_main and dist.world == 1 and dist.gather("x") == ["x"]
    assert dist.on_main(lambda: 5) == 5
