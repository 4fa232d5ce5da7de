"""One place that decides how output looks: colour on a terminal, plain text in pipes.

In a pipe (`vethtrace check | grep rule-id`, `lab list > file`) nothing is
wrapped: a table cell or a sentence split over two lines loses the
namespace the grep is looking for. So a console that is not a terminal is
as wide as `COLUMNS` says when it is set (tests and people who want a fixed
width), and otherwise wide enough that nothing wraps. Trailing spaces
(rich pads every table cell, the last one too) are stripped in pipes, so
`grep 'x$'` and diffs behave.
"""

from __future__ import annotations

import os
import sys
from typing import IO

from rich.console import Console

# "Unbounded" for rich, which needs a number: wider than any line we print.
# Nothing we print in a pipe expands to the full width (no rules or panels).
PIPE_WIDTH = 10_000
# Prose (explanations) on a terminal stays this narrow even in a wide window.
PROSE_WIDTH = 100


class _StripTrailing:
    """A text stream that drops spaces at the end of each line. Spaces are held
    back until something other than a newline follows them on the same line,
    so a line written in pieces is stripped correctly too."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._spaces = ""

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            body = piece.rstrip("\n")
            newline = piece[len(body) :]
            stripped = body.rstrip(" ")
            if stripped:
                out.append(self._spaces + stripped)
                self._spaces = ""
            self._spaces += body[len(stripped) :]
            if newline:
                out.append(newline)
                self._spaces = ""
        self._stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", None) or "utf-8"


def _columns() -> int | None:
    try:
        value = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        return None
    return value if value > 0 else None


def make_console(stderr: bool = False, width: int | None = None) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    is_tty = stream.isatty()
    if width is None and not is_tty:
        width = _columns() or PIPE_WIDTH
    return Console(
        file=stream if is_tty else _StripTrailing(stream),  # type: ignore[arg-type]
        width=width,
        highlight=False,
        soft_wrap=not is_tty,
        no_color=not is_tty or "NO_COLOR" in os.environ,
        emoji=False,
    )


def prose_width(console: Console) -> int:
    """How wide explanations are wrapped: at most PROSE_WIDTH on a terminal (long
    lines are hard to read), the console's width in a pipe (no wrapping unless
    COLUMNS asks for it)."""
    return min(console.width, PROSE_WIDTH) if console.is_terminal else console.width
