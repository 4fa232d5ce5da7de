"""Exit statuses and the one error type a user can cause.

Everything a user can get wrong (unknown namespace, bad filter, no root, no
bcc) raises UserError; cli.main turns it into one line on stderr and
ExitStatus.ERROR, so no traceback ever reaches a person.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0  # clean / reachable
    FINDINGS = 1  # check found problems / ping not reachable
    ERROR = 2  # bad input, missing privilege or dependency
    INTERRUPTED = 130


class UserError(Exception):
    """A problem the user can fix; the message is shown as one line."""

    def __init__(self, message: str, status: ExitStatus = ExitStatus.ERROR) -> None:
        super().__init__(message)
        self.status = status


def require_root(what: str) -> None:
    import os

    if os.geteuid() != 0:
        raise UserError(f"{what} needs root (CAP_NET_ADMIN/CAP_BPF); run it with sudo")
