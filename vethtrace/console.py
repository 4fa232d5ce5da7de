"""One place that decides how output looks: colour on a terminal, plain text in pipes."""

from __future__ import annotations

import os
import sys

from rich.console import Console


def make_console(stderr: bool = False, width: int | None = None) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    is_tty = stream.isatty()
    if width is None and not is_tty:
        width = int(os.environ.get("COLUMNS", "100"))
    return Console(
        file=stream,
        width=width,
        highlight=False,
        soft_wrap=not is_tty,
        no_color=not is_tty or "NO_COLOR" in os.environ,
        emoji=False,
    )
