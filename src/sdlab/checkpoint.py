"""Checkpoint files: written atomically, read as data only.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(..., weights_only=True)`: loading never runs code from the file.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Callable

import torch

from .errors import UserError, first_line


TEMPORARY = ".tmp"   # save_checkpoint writes .NAME.tmpPID, then renames it to NAME


class CheckpointError(UserError):
    """A checkpoint cannot be read; the message names the file and the fix."""


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write `state` to `path` atomically.

    The bytes go to a temporary file in the same folder, which is flushed and fsynced, then
    renamed over `path`: a crash at any moment leaves either the old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{TEMPORARY}{os.getpid()}"
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
    except Exception as err:  # torch raises several types for damaged or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: it is damaged, not a checkpoint, or "
                              f"holds code, which is never loaded ({first_line(err)})") from None


def checkpoint_kind(state) -> str | None:
    """The `kind` a run config stored in checkpoint `state` ("vae", "diffusion"), else None."""
    config = state.get("config") if isinstance(state, dict) else None
    return config.get("kind") if isinstance(config, dict) else None


def read_cache(path: Path, fits: Callable[[dict], bool], what: str, rebuild: str) -> dict | None:
    """A cache file written with `save_checkpoint`, or None when there is none, or when it is
    damaged or `fits(cached)` is false: then the caller rebuilds it, after a one-line warning
    "`what` PATH is damaged; `rebuild`"."""
    if not path.exists():
        return None
    try:
        cached = load_checkpoint(path)
        if fits(cached):
            return cached
    except (CheckpointError, KeyError, TypeError, AttributeError):
        pass
    warnings.warn(f"{what} {path} is damaged; {rebuild}")
    return None


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files of `save_checkpoint` calls whose process is gone.

    A SIGKILL (or power loss) between writing and renaming leaves `.NAME.tmpPID` behind; the
    checkpoint itself is intact (the old or the new file). Returns the files removed.
    """
    removed = []
    pattern = re.compile(r"^\..+" + re.escape(TEMPORARY) + r"(\d+)$")
    for file in Path(folder).glob(f".*{TEMPORARY}*"):
        match = pattern.match(file.name)
        if match and not _process_alive(int(match.group(1))):
            file.unlink(missing_ok=True)
            removed.append(file)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True     # alive, owned by someone else
    return True


def state_digest(weights: dict) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values: the identity of a set of
    weights, independent of the file that holds them (latent checkpoints record their VAE's)."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
