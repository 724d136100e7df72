"""Output locations, checked before the work that fills them.

A command that would fail only when it writes its result (a folder that is a file, a read-only
disk, an image name without an image extension) loses the minutes it spent computing it. Every
command therefore checks its outputs first, with these functions, and a failed check is one
`UserError` naming the flag, the path and the fix. A training run also locks its folder
(`lock_dir`), so two runs never write into one.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

from .errors import UserError

try:
    import fcntl
except ImportError:      # Windows: no advisory locks; runs are not protected from each other there
    fcntl = None

LOCK_NAME = ".lock"
_held: dict[Path, int] = {}      # folder -> open lock file of this process


def writable_dir(path: str | Path, flag: str) -> Path:
    """Create folder `path` if needed and prove it takes a file; returns it.

    Raises UserError naming `flag` when `path` (or a folder above it) is a file or nothing can
    be written there. A probe file is created and removed: permission bits alone do not tell
    (root ignores them, a read-only mount does not show in them).
    """
    folder = Path(path)
    for above in (folder, *folder.parents):
        if above.exists() and not above.is_dir():
            raise UserError(f"{flag} {folder}: {above} is a file, not a folder; choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"{flag} {folder}: cannot write there ({err.strerror}); choose a folder "
                        "you can write to") from None
    return folder


def writable_file(path: str | Path, flag: str, suffixes: tuple[str, ...]) -> Path:
    """Check that file `path` can be written and ends in one of `suffixes`; returns it.

    The folder is created if needed (see `writable_dir`); an existing file must be writable.
    """
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{flag} {target} is a folder; give a file name such as {target / ('out' + suffixes[0])}")
    if target.suffix.lower() not in suffixes:
        raise UserError(f"{flag} {target}: the name must end in {', '.join(suffixes)}")
    writable_dir(target.parent, flag)
    if target.exists() and not os.access(target, os.W_OK):
        raise UserError(f"{flag} {target}: the file is read-only; choose another name or make it writable")
    return target


def lock_dir(folder: str | Path, flag: str) -> None:
    """Hold an exclusive lock on `folder` (FOLDER/.lock) until `unlock_dir` or the process ends.

    The lock is the kernel's (flock), so it goes with the process, also on SIGKILL: there is never
    a stale lock to delete. Taking it again in the same process is a no-op. Raises UserError naming
    the process that holds it.
    """
    folder = Path(folder).resolve()
    if fcntl is None or folder in _held:
        return
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UserError(f"{flag} {folder} is in use by {holder}; wait for that run to end or "
                        "choose another folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    _held[folder] = fd


def unlock_dir(folder: str | Path | None = None) -> None:
    """Release `lock_dir`'s lock on `folder` (None: every lock of this process), if held."""
    for held in [Path(folder).resolve()] if folder is not None else list(_held):
        fd = _held.pop(held, None)
        if fd is not None:
            os.close(fd)
