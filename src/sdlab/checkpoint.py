"""Checkpoint files: written atomically, read as data only.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(..., weights_only=True)`: loading never runs code from the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


class CheckpointError(Exception):
    """A checkpoint cannot be read; the message names the file and the fix."""


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write `state` to `path` atomically.

    The bytes go to a temporary file in the same folder, which is flushed and fsynced, then
    renamed over `path`: a crash at any moment leaves either the old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename itself durable
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint` (weights_only: data, never code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first or pass the right path")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
