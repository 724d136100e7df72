"""Command-line flags built from config dataclasses, plus `--config FILE`.

Every dataclass field becomes `--kebab-case` (help from the field's metadata). The original
repo's flag names are kept as aliases, declared by each entry point in one table. Values are
merged as: dataclass defaults < `--config FILE` (JSON or TOML) < flags typed on the line.
A value that fails its dataclass check is reported as one line naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import typing
from pathlib import Path

from ..config import ConfigError
from ..runtime import PRECISIONS
from ..diffusion import SamplerConfig


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (plus a pointer to --help), exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def finite_float(text: str) -> float:
    """argparse type: a float that is neither NaN nor infinite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number (got {text!r})")
    return value


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _parse_tuple(kind: type):
    def parse(text: str):
        try:
            return tuple(kind(part) for part in text.replace(",", " ").split())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}s like 1,2,2; got {text!r}")
    return parse


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str,
                     aliases: dict[str, list[str]] | None = None, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of dataclass `cls` (default SUPPRESS: only typed flags appear).

    Fields in `skip` get no flag (the entry point sets them, e.g. from the data)."""
    aliases = aliases or {}
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        meta = dict(f.metadata)
        kwargs = {"dest": f.name, "default": argparse.SUPPRESS,
                  "help": f"{meta.pop('help', '')} (default: {_show(f.default)})"}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            kwargs["type"] = _parse_tuple(typing.get_args(kind)[0])
            kwargs["metavar"] = "A,B,.."
        else:
            kwargs["type"] = finite_float if kind is float else kind
        kwargs.update(meta)
        group.add_argument(flag_name(f.name), *aliases.get(f.name, []), **kwargs)


def show_defaults(parser: argparse.ArgumentParser, defaults: dict, where: str) -> None:
    """Make --help print `defaults` (field -> the value a run `where` uses, e.g. "on cpu") in
    place of the dataclass defaults, so that the help tells what a run with no flags does."""
    for action in parser._actions:
        if action.dest in defaults and action.help and action.help.endswith(")"):
            head = action.help.rsplit(" (default: ", 1)[0]
            action.help = f"{head} (default {where}: {_show(defaults[action.dest])})"


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that draws images: SamplerConfig's fields (--steps short for
    --sample-steps) and --precision."""
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="autocast while sampling (auto: bf16 where the device runs it natively; fp16: CUDA)")
    add_config_flags(parser, SamplerConfig, "sampling", {"sample_steps": ["--steps"]}, skip=("num_samples",))


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return repr(value) if value == "" else str(value)


def read_config_file(path: str) -> dict:
    """Read `--config FILE` (JSON or TOML) into a flat {field: value} dict.

    Sections such as {"train": {...}, "data": {...}} (the layout of the saved config.json)
    are flattened, so a saved config can be passed back in.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config", f"no such file {path}; pass a JSON or TOML file")
    try:
        if p.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:         # Python 3.10: the same parser, as a package
                import tomli as tomllib

            raw = tomllib.loads(p.read_text())
        else:
            raw = json.loads(p.read_text())
    except ValueError as err:                   # also a file that is not UTF-8
        raise ConfigError("config", f"cannot parse {path}: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError("config", f"{path} must hold an object of flag: value pairs "
                                    f"(got {type(raw).__name__})")
    flat: dict = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return {k.replace("-", "_"): tuple(v) if isinstance(v, list) else v for k, v in flat.items()}


def wrong_type(value, field: dataclasses.Field) -> str:
    """What a config file's `value` for `field` should have been ("a number", ...), judged by the
    field's default; "" when it fits."""
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    if isinstance(default, bool):
        return "" if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return "" if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if isinstance(default, float):
        return "" if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if isinstance(default, str):
        return "" if isinstance(value, str) else "a string"
    if isinstance(default, tuple):
        return "" if isinstance(value, tuple) else "a list"
    return ""


def build_configs(parser: Parser, args: argparse.Namespace, classes: dict[str, type],
                  overrides: dict | None = None) -> dict:
    """Instantiate each dataclass in `classes` ({section: cls}) from defaults, file and flags.

    `overrides` (field -> value) are applied under the typed flags: entry points use them for
    defaults that depend on something else (e.g. the device). Errors exit with one line.
    """
    typed = {k: v for k, v in vars(args).items() if k != "config"}
    merged = dict(overrides or {})
    if getattr(args, "config", None):
        try:
            from_file = read_config_file(args.config)
        except ConfigError as err:
            parser.error(f"--config: {err.message}")
        known = {f.name for cls in classes.values() for f in dataclasses.fields(cls)}
        unknown = sorted(set(from_file) - known)
        if unknown:
            parser.error(f"--config {args.config}: unknown keys {', '.join(unknown)}")
        fields = {f.name: f for cls in classes.values() for f in dataclasses.fields(cls)}
        for key, value in from_file.items():
            wrong = wrong_type(value, fields[key])
            if wrong:
                parser.error(f"--config {args.config}: {key} must be {wrong} (got {value!r})")
        merged.update(from_file)
    merged.update(typed)
    configs = {}
    for section, cls in classes.items():
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            configs[section] = cls(**{k: v for k, v in merged.items() if k in names})
        except ConfigError as err:
            parser.error(f"{flag_name(err.field)}: {err.message}")
        except TypeError as err:
            parser.error(str(err))
    return configs


def print_error_and_exit(message: str, code: int = 2) -> typing.NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
