"""`vethtrace record --continuous [DIR]`: the always-on flight recorder (recorder/loop.py).

Wiring only: the options people type (sizes, durations) become
recorder.loop.Options, status lines go to stderr. Exit 0 when stopped by
SIGTERM/Ctrl-C or --duration, 2 on bad options or when tracing is impossible.
"""

from __future__ import annotations

import os
import sys

from vethtrace.errors import UserError
from vethtrace.recorder.when import parse_duration, parse_size

DEFAULT_DIR = "/var/lib/vethtrace/recorder"


def run(
    continuous: bool = False,
    directory: str | None = None,
    max_size: str = "256M",
    max_age: str | None = None,
    min_free: str | None = None,
    segment_size: str | None = None,
    no_drops: bool = False,
    duration: float | None = None,
) -> int:
    if not continuous:
        raise UserError("only the flight recorder exists so far: use `record --continuous [DIR]`")
    if os.geteuid() != 0:
        raise UserError(
            "the recorder needs root (netlink in every namespace, BPF); run it with sudo"
        )
    if duration is not None and duration <= 0:
        raise UserError(f"--duration {duration}: must be more than 0 seconds")
    size = parse_size(max_size, "--max-size")
    if size < 1 << 20:
        raise UserError(f"--max-size {max_size}: at least 1M")
    from vethtrace.recorder.loop import FlightRecorder, Options

    target = directory or DEFAULT_DIR
    options = Options(
        directory=target,
        max_size=size,
        max_age=parse_duration(max_age, "--max-age") if max_age else None,
        min_free=parse_size(min_free, "--min-free") if min_free else _default_min_free(target),
        segment_size=parse_size(segment_size, "--segment-size") if segment_size else None,
        drops=not no_drops,
        duration=duration,
        command=sys.argv,
    )
    return FlightRecorder(options, _status).run()


def _status(line: str) -> None:
    print(f"vethtrace record: {line}", file=sys.stderr, flush=True)


def _default_min_free(directory: str) -> int:
    """Keep 5% of the filesystem free, but never ask more than 1 GiB."""
    probe = directory
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "/"
    st = os.statvfs(probe)
    return min(1 << 30, st.f_blocks * st.f_frsize // 20)
