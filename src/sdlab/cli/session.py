"""Wiring between the entry points and the library: device, data, trainer, user errors.

Every training command goes through `run_training`, so the VAE and the diffusion model share
one data pipeline, one trainer and one way of reporting mistakes: a user error is one line on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import CheckpointError, load_checkpoint
from ..config import ConfigError
from ..data import DATASETS, BatchLoader, DataConfig, DataError, Splits, load_splits
from ..trainer import DEVICES, TrainConfig, Trainer, TrainingStopped, pick_device
from .flags import Parser, add_config_flags, config_dict, flag_name, print_error_and_exit

# The original repo's flag names, kept as aliases of the shared flags.
SHARED_ALIASES = {
    "batch_size": ["--batch"],
    "image_size": ["--imgsz"],
    "device": ["--devices"],
}


def user_errors(main: Callable) -> Callable:
    """Turn the errors a user can cause into one line on stderr and an exit status."""

    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            return main(argv)
        except TrainingStopped as err:
            print_error_and_exit(str(err), err.exit_code)
        except (DataError, CheckpointError) as err:
            print_error_and_exit(str(err))
        except ConfigError as err:
            print_error_and_exit(f"{flag_name(err.field)}: {err.message}")
        except KeyboardInterrupt:
            print_error_and_exit("interrupted", 130)

    return wrapped


def shared_parser(prog: str, description: str) -> Parser:
    """A parser with the data and training flags every training command has."""
    parser = Parser(prog=prog, description=description)
    parser.add_argument("--config", "--config-file", dest="config", default=None, metavar="FILE",
                        help="JSON or TOML file of defaults (flags on the line override it)")
    add_config_flags(parser, DataConfig, "data", SHARED_ALIASES)
    add_config_flags(parser, TrainConfig, "training", SHARED_ALIASES)
    return parser


def default_precision(device: torch.device) -> str:
    """bf16 where the hardware runs it natively (CUDA, or CPUs with AVX512-BF16/AMX), else fp32."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def resolve_device(parser: Parser, train: TrainConfig) -> torch.device:
    """The one place a device is chosen; fp16 is refused off CUDA."""
    try:
        device = pick_device(train.device)
    except ValueError as err:
        parser.error(str(err))
    if train.precision == "fp16" and device.type != "cuda":
        parser.error(f"--precision fp16 needs CUDA (device is {device.type}); use --precision bf16 or fp32")
    return device


def checkpoint_config(train: TrainConfig) -> dict | None:
    """The run config stored in the checkpoint that --resume names (None without --resume)."""
    if not train.resume:
        return None
    path = Path(train.save_dir) / "last.pt" if train.resume == "last" else Path(train.resume)
    return load_checkpoint(path)["config"]


def stored_data_config(config: dict, dataset: str | None, data_dir: str | None) -> DataConfig:
    """The data config a checkpoint was trained with, with --dataset / --data-dir overrides."""
    stored = dict(config["data"])
    stored.update({k: v for k, v in (("dataset", dataset), ("data_dir", data_dir)) if v})
    return DataConfig(**stored)


def eval_parser(prog: str, description: str, json_name: str) -> Parser:
    """A parser with the flags every checkpoint-evaluation command has."""
    parser = Parser(prog=prog, description=description)
    parser.add_argument("checkpoint")
    parser.add_argument("--dataset", choices=DATASETS, default=None, help="default: the training dataset")
    parser.add_argument("--data-dir", default=None, help="default: the training data dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--out", default=None, help=f"JSON file (default: {json_name} beside the checkpoint)")
    return parser


def build_loaders(data: DataConfig, train: TrainConfig, device: torch.device,
                  splits: Splits | None = None) -> tuple[Splits, BatchLoader, BatchLoader]:
    """Decode the dataset once and cut it into training and validation batch loaders."""
    splits = splits or load_splits(data, seed=train.seed)
    keep = data.gpu_cache and device.type == "cuda"
    train_loader = BatchLoader(splits.train, data.batch_size, shuffle=True, hflip=data.hflip,
                               drop_last=len(splits.train) >= data.batch_size, seed=train.seed,
                               device=device, keep_on_device=keep)
    val_loader = BatchLoader(splits.test, data.batch_size, shuffle=False, hflip=False,
                             drop_last=False, device=device, keep_on_device=keep)
    return splits, train_loader, val_loader


def save_run_config(configs: dict, save_dir: str) -> dict:
    """Write the resolved config as SAVE_DIR/config.json; returns it as a plain dict."""
    resolved = config_dict(configs)
    path = Path(save_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(resolved, indent=2))
    return resolved


def run_training(trainer: Trainer) -> None:
    """Fit, then report where the outputs went."""
    trainer.fit()
    cfg = trainer.cfg
    print(f"done: checkpoints in {cfg.save_dir} (best.pt, last.pt), TensorBoard logs in {cfg.logs} "
          f"(tensorboard --logdir {cfg.logs})", file=sys.stderr)
