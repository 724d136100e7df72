"""Output locations, checked before the work that fills them.

A command that would fail only when it writes its result (a folder that is a file, a read-only
disk, an image name without an image extension) loses the minutes it spent computing it. Every
command therefore checks its outputs first, with these two functions, and a failed check is one
`UserError` naming the flag, the path and the fix.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UserError


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
