"""What the entry points share: the parsers' common flags, the device they pick, and the error
boundary. The recipes themselves (what to train, how to evaluate) are in `sdlab.recipes`.

`user_errors` is each command's error boundary, where a mistake the user can fix (any `UserError`, or an `OSError`
such as a full disk) becomes one line on stderr naming the flag or file and exit status 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import warnings
from pathlib import Path
from typing import Callable

import torch

from ..config import ConfigError
from ..data import DATASETS, DataConfig
from ..distributed import launched_rank
from ..errors import UserError
from ..outputs import unlock_dir, writable_file
from ..runtime import DEVICE_HELP, pick_device, resolve_precision
from ..trainer import TrainConfig
from .flags import Parser, add_config_flags, flag_name, print_error_and_exit, show_defaults

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
            if err.agreed and launched_rank() != 0:      # rank 0 of the torchrun job says it
                raise SystemExit(err.exit_code) from None
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


def machine_defaults(parser: Parser, defaults: dict) -> None:
    """--help shows `defaults` (a recipe's defaults for the device "auto" picks here) and the
    precision "auto" resolves to, in place of the dataclass defaults."""
    device = pick_device("auto")
    shown = dict(defaults, precision=f"auto ({resolve_precision(device, 'auto')} here)",
                 device=f"auto ({device.type} here)")
    show_defaults(parser, shown, f"on {device.type}")


def resolve_device(parser: Parser, train: TrainConfig) -> torch.device:
    """The training commands' device (see `runtime.pick_device`); a precision it cannot run is refused."""
    try:
        device = pick_device(train.device)
        resolve_precision(device, train.precision)
    except ConfigError as err:
        parser.error(f"--{err.field} {getattr(train, err.field)}: {err.message}")
    return device


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


