"""Wiring between the entry points and the library: device, data, trainer, user errors.

Every training command goes through `run_training`, so the VAE and the diffusion model share
one data pipeline, one trainer and one way of reporting mistakes: `user_errors` is each
command's error boundary, where a mistake the user can fix (any `UserError`, or an `OSError`
such as a full disk) becomes one line on stderr naming the flag or file and exit status 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import sys
import warnings
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import CheckpointError
from ..config import ConfigError
from ..data import DATASETS, BatchLoader, DataConfig, Splits, load_splits
from ..errors import UserError
from ..outputs import unlock_dir, writable_file
from ..pipeline import load_trained
from ..runtime import DEVICE_HELP, check_precision, pick_device
from ..trainer import CHECKPOINTS, TrainConfig, Trainer, prepare_run_dir
from .flags import Parser, add_config_flags, config_dict, flag_name, print_error_and_exit

# TrainConfig fields that act once, on the command line, and are never stored.
ONE_OFF_ACTIONS = {"resume": "", "overwrite": False, "reset_schedule": False}

# The original repo's flag names, kept as aliases of the shared flags.
SHARED_ALIASES = {
    "batch_size": ["--batch"],
    "image_size": ["--imgsz"],
    "device": ["--devices"],
}


# What to do about the operating-system errors that a user's machine or paths cause.
OS_ERROR_FIXES = {
    errno.ENOSPC: "free disk space or write somewhere else",
    errno.EDQUOT: "free disk space or write somewhere else",
    errno.EACCES: "choose a path you can write to",
    errno.EPERM: "choose a path you can write to",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file; check the path",
    errno.EISDIR: "the path is a folder; give a file name",
}


def one_line_warning(message, category, *_where, **_kwargs) -> str:
    """Warnings on the command line are one line each, like errors (no source line)."""
    return f"warning: {message}\n"


def user_errors(main: Callable) -> Callable:
    """A command's error boundary: what the user can fix is one line on stderr, exit status 2
    (1 for a run stopped by non-finite values, 130 for a signal); bugs keep their traceback."""

    @functools.wraps(main)
    def wrapped(argv=None):
        warnings.formatwarning = one_line_warning
        try:
            return main(argv)
        except ConfigError as err:
            print_error_and_exit(f"{flag_name(err.field)}: {err.message}")
        except UserError as err:
            print_error_and_exit(str(err), err.exit_code)
        except OSError as err:
            where = f"{err.filename}: " if err.filename else ""
            fix = OS_ERROR_FIXES.get(err.errno, "check the path and the disk")
            print_error_and_exit(f"{where}{err.strerror or err} ({fix})")
        except KeyboardInterrupt:
            print_error_and_exit("interrupted", 130)
        finally:
            unlock_dir()     # a command's run folders are free when it ends, also called in-process

    return wrapped


def shared_parser(prog: str, description: str) -> Parser:
    """A parser with the data and training flags every training command has."""
    parser = Parser(prog=prog, description=description)
    parser.add_argument("--config", "--config-file", dest="config", default=None, metavar="FILE",
                        help="JSON or TOML file of defaults (flags on the line override it)")
    add_config_flags(parser, DataConfig, "data", SHARED_ALIASES)
    add_config_flags(parser, TrainConfig, "training", SHARED_ALIASES)
    return parser


def resolve_device(parser: Parser, train: TrainConfig) -> torch.device:
    """The training commands' device (see `runtime.pick_device`); a precision it cannot run is refused."""
    try:
        device = pick_device(train.device)
        check_precision(device, train.precision)
    except ConfigError as err:
        parser.error(f"--{err.field} {getattr(train, err.field)}: {err.message}")
    return device


def prepare_run(train: TrainConfig, kind: str) -> dict | None:
    """Check the output folders before any work (see `trainer.prepare_run_dir`); with --resume,
    return the checkpoint it names, which must be a `kind` checkpoint (else None)."""
    path = prepare_run_dir(train)
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


def eval_parser(prog: str, description: str, json_name: str) -> Parser:
    """A parser with the flags every checkpoint-evaluation command has (see `eval_outputs`)."""
    parser = Parser(prog=prog, description=description)
    parser.add_argument("checkpoint")
    parser.add_argument("--dataset", choices=DATASETS, default=None, help="default: the training dataset")
    parser.add_argument("--data-dir", default=None, help="default: the training data dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--out", default=None, help=f"JSON file (default: {json_name} beside the checkpoint)")
    return parser


def eval_outputs(args, parser: Parser, counts: dict[str, int], json_name: str) -> tuple[torch.device, Path]:
    """Check an evaluation command's numbers, device and output file before any work.

    `counts` maps flags to their minimum (e.g. {"batch_size": 1}). Returns the device and the
    JSON path (--out, else `json_name` beside the checkpoint)."""
    for flag, least in counts.items():
        if getattr(args, flag) < least:
            parser.error(f"{flag_name(flag)} must be >= {least} (got {getattr(args, flag)})")
    device = pick_device(args.device)
    out = Path(args.out or Path(args.checkpoint).with_name(json_name))
    return device, writable_file(out, "--out", (".json",))


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
    """Write the resolved config as SAVE_DIR/config.json; returns it as a plain dict.

    The one-off actions (--resume, --overwrite, --reset-schedule) are stored at their defaults:
    a config passed back with --config must never resume or delete a run by itself."""
    configs = dict(configs, train=dataclasses.replace(configs["train"], **ONE_OFF_ACTIONS))
    resolved = config_dict(configs)
    path = Path(save_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(resolved, indent=2))
    return resolved


def run_training(trainer: Trainer) -> None:
    """Fit, then report where the outputs went."""
    trainer.fit()
    cfg = trainer.cfg
    written = ", ".join(name for name in CHECKPOINTS if (Path(cfg.save_dir) / name).exists())
    print(f"done: checkpoints in {cfg.save_dir} ({written}), TensorBoard logs in {cfg.logs} "
          f"(tensorboard --logdir {cfg.logs})", file=sys.stderr)
