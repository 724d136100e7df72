"""What every training recipe shares: joining a torchrun job, claiming the run folder (and
reading the checkpoint to resume), the data loaders, the run config written beside the
checkpoints, and the final report.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import CheckpointError
from ..config import config_dict
from ..data import BatchLoader, DataConfig, DataError, Splits, load_splits
from ..distributed import Dist, setup
from ..pipeline import DiffusionPipeline
from ..trained import load_trained
from ..runtime import pick_device, resolve_precision
from ..trainer import CHECKPOINTS, TrainConfig, Trainer, prepare_run_dir

# TrainConfig fields that act once, when a run starts, and are never stored.
ONE_OFF_ACTIONS = {"resume": "", "overwrite": False, "reset_schedule": False}


def start_run(run):
    """This process's place in a torchrun job (one process without torchrun), its device, and
    `run` (a recipe's run dataclass) with the precision it trains at resolved (`runtime`)."""
    dist, device = setup(pick_device(run.train.device))
    train = dataclasses.replace(run.train, precision=resolve_precision(device, run.train.precision))
    return dist, device, dataclasses.replace(run, train=train)


def with_defaults(run_cls, defaults: dict, sections: dict):
    """A `run_cls` run from a recipe's `defaults` (field -> value, which its command applies under
    the flags) with `sections` ({section: {field: value}}) over them: what the command line runs
    with no flags, from Python."""
    sections, built = dict(sections), {}
    for f in dataclasses.fields(run_cls):
        cls = f.default_factory
        names = {g.name for g in dataclasses.fields(cls)}
        built[f.name] = cls(**{**{k: v for k, v in defaults.items() if k in names}, **sections.pop(f.name, {})})
    if sections:
        raise TypeError(f"{run_cls.__name__} has no section {', '.join(sections)}")
    return run_cls(**built)


def prepare_run(train: TrainConfig, kind: str, dist: Dist) -> dict | None:
    """Check the output folders before any work (see `trainer.prepare_run_dir`; rank 0 does it);
    with --resume, return the checkpoint it names, which must be a `kind` checkpoint (else None)."""
    path = dist.on_main(lambda: prepare_run_dir(train))
    if path is None:
        return None
    try:
        return load_trained(str(path), torch.device("cpu"), kind)
    except CheckpointError as err:
        raise CheckpointError(f"--resume: {err}") from None


def stored_data_config(config: dict, dataset: str | None, data_dir: str | None) -> DataConfig:
    """The data config a checkpoint was trained with, with --dataset / --data-dir overrides."""
    stored = dict(config["data"])
    stored.update({k: v for k, v in (("dataset", dataset), ("data_dir", data_dir)) if v})
    return DataConfig(**stored)


def stored_splits(config: dict, dataset: str | None, data_dir: str | None) -> tuple[DataConfig, Splits]:
    """That data config and its splits, decoded and split as in training (the run's seed)."""
    data = stored_data_config(config, dataset, data_dir)
    return data, load_splits(data, seed=config["train"]["seed"])


def load_data(data: DataConfig, train: TrainConfig, dist: Dist) -> Splits:
    """The decoded dataset (rank 0 decodes first and writes the cache the others then read)."""
    with dist.main_first():
        return load_splits(data, seed=train.seed)


def build_loaders(data: DataConfig, train: TrainConfig, device: torch.device,
                  splits: Splits | None = None, dist: Dist = Dist()) -> tuple[Splits, BatchLoader, BatchLoader]:
    """Decode the dataset once and cut it into training and validation batch loaders (each
    process's shard of every global batch, see `BatchLoader`)."""
    splits = splits or load_data(data, train, dist)
    keep = data.gpu_cache and device.type == "cuda"
    step_images = data.batch_size * dist.world
    if dist.world > 1:
        for name, split in (("training", splits.train), ("validation", splits.test)):
            if len(split) < step_images:
                err = DataError(f"the {name} split has {len(split)} images, fewer than one step's "
                                f"{step_images} ({dist.world} processes x --batch-size {data.batch_size}); "
                                "lower --batch-size or start fewer processes")
                err.agreed = True           # every process finds it: rank 0 alone says it
                raise err
    shard = {"device": device, "keep_on_device": keep, "rank": dist.rank, "world": dist.world}
    train_loader = BatchLoader(splits.train, data.batch_size, shuffle=True, hflip=data.hflip,
                               drop_last=len(splits.train) >= step_images, seed=train.seed, **shard)
    val_loader = BatchLoader(splits.test, data.batch_size, shuffle=False, hflip=False,
                             drop_last=False, **shard)
    return splits, train_loader, val_loader


def save_run_config(configs: dict, save_dir: str, dist: Dist = Dist()) -> dict:
    """Write the resolved config as SAVE_DIR/config.json (rank 0); returns it as a plain dict.

    The one-off actions (--resume, --overwrite, --reset-schedule) are stored at their defaults:
    a config passed back with --config must never resume or delete a run by itself."""
    configs = dict(configs, train=dataclasses.replace(configs["train"], **ONE_OFF_ACTIONS))
    resolved = config_dict(configs)
    if dist.is_main:
        path = Path(save_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(resolved, indent=2))
    return resolved


@dataclass
class Trained:
    """What a recipe returns: the trainer (history, `eval_model`: the EMA weights when enabled)
    and, for diffusion, a pipeline ready to sample with those weights."""

    trainer: Trainer
    pipeline: DiffusionPipeline | None = None


def report(trainer: Trainer) -> None:
    """Say where a finished run's outputs went (rank 0)."""
    cfg = trainer.cfg
    if not trainer.dist.is_main:
        return
    written = ", ".join(name for name in CHECKPOINTS if (Path(cfg.save_dir) / name).exists())
    print(f"done: checkpoints in {cfg.save_dir} ({written}), TensorBoard logs in {cfg.logs} "
          f"(tensorboard --logdir {cfg.logs})", file=sys.stderr)
