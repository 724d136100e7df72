"""The one base class of the failures a user can cause and fix.

Every error the library raises for bad input (a flag out of range, a missing or damaged file,
a dataset that cannot be read, a checkpoint of the wrong kind) derives from `UserError`, and its
message names the flag or file and what to do. The command-line boundary
(`sdlab.cli.session.user_errors`) turns these, and operating-system errors such as a full disk,
into one line on stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure the user can fix; the message says how. `exit_code` is the command's status.

    `agreed` marks an error that every process of a torchrun job raises together (rank 0 found
    it and told the others, or all decided it at once): only rank 0 prints it."""

    exit_code = 2
    agreed = False


def first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of `err`'s message (its type name if it has none), cut to `limit` characters:
    torch's errors run to many lines, and a user error is one."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]
