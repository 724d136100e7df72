"""Configuration errors shared by every config dataclass.

Each module owns a frozen dataclass validated in `__post_init__`. A failed check raises
`ConfigError` naming the field, so the command line can name the flag (`--kl-weight`) while
library users see the field (`kl_weight`).
"""

from __future__ import annotations

import dataclasses
import math

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A config value is out of range. `field` is the dataclass field name."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def require(condition: bool, field: str, message: str) -> None:
    """Raise ConfigError(field, message) unless `condition` holds."""
    if not condition:
        raise ConfigError(field, message)


def require_finite(cfg) -> None:
    """Raise ConfigError for the first float field of dataclass `cfg` that is NaN or infinite.

    Range checks such as `lr > 0` let `inf` through and every config calls this first, so no
    run starts with a learning rate, weight or guidance scale that can only produce NaN."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f.name, f"must be a finite number (got {value})")


def require_choice(value: str, choices: tuple[str, ...], field: str) -> None:
    """Raise ConfigError unless `value` is one of `choices`, listing the allowed values."""
    require(value in choices, field, f"got {value!r}; choose one of {', '.join(choices)}")


def option(default, help: str, **extra):
    """A dataclass field whose metadata carries the command-line help (and e.g. `choices`)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults: configs are frozen")
    return dataclasses.field(default=default, metadata={"help": help, **extra})


def from_stored(cls, values: dict):
    """Rebuild config dataclass `cls` from a stored plain dict (JSON or checkpoint: lists -> tuples)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def config_dict(configs: dict) -> dict:
    """{section: dataclass} -> plain nested dict (tuples as lists), for JSON and checkpoints."""
    return {section: {k: list(v) if isinstance(v, tuple) else v
                      for k, v in dataclasses.asdict(cfg).items()}
            for section, cfg in configs.items()}
