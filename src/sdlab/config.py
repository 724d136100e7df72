"""Configuration errors shared by every config dataclass.

Each module owns a frozen dataclass validated in `__post_init__`. A failed check raises
`ConfigError` naming the field, so the command line can name the flag (`--kl-weight`) while
library users see the field (`kl_weight`).
"""

from __future__ import annotations

import dataclasses


class ConfigError(ValueError):
    """A config value is out of range. `field` is the dataclass field name."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def require(condition: bool, field: str, message: str) -> None:
    """Raise ConfigError(field, message) unless `condition` holds."""
    if not condition:
        raise ConfigError(field, message)


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
