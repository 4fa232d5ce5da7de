"""Kernel time to wall time, in one place.

Probe events and our own stamps are CLOCK_MONOTONIC ns (time since boot, no
steps); people read wall-clock time, and packet sockets stamp CLOCK_REALTIME.
Converting takes the offset between the two clocks, measured once per run (the
smallest of a few back-to-back samples, so the error is a few µs) or read back
from a recording's header `clock` pair. Every conversion goes through `Clock`:
a monotonic stamp shown without the offset reads as a date near boot time (an
old watch bug), and a stamp of 0 (no event) is not a time at all, so it
converts to None rather than to the boot moment.

A wall-clock step during a run (NTP) is not followed: runs are minutes long.
"""

from __future__ import annotations

import datetime
import time
from typing import Any


class Clock:
    """offset_ns = CLOCK_REALTIME - CLOCK_MONOTONIC, measured now or given."""

    def __init__(self, offset_ns: int | None = None) -> None:
        if offset_ns is None:
            best: tuple[int, int] | None = None
            for _ in range(5):
                m0 = time.monotonic_ns()
                w = time.time_ns()
                m1 = time.monotonic_ns()
                if best is None or m1 - m0 < best[0]:
                    best = (m1 - m0, w - (m0 + m1) // 2)
            assert best is not None
            offset_ns = best[1]
        self.offset_ns = offset_ns

    @classmethod
    def from_header(cls, clock: Any) -> Clock | None:
        """The clock of a recording's header ({"monotonic_ns", "realtime"}), or None."""
        try:
            mono, real = int(clock["monotonic_ns"]), float(clock["realtime"])
        except (TypeError, KeyError, ValueError):
            return None
        return cls(int(real * 1e9) - mono)

    def header(self) -> dict[str, Any]:
        """The pair a recording's header keeps (read back by from_header)."""
        mono = time.monotonic_ns()
        return {"monotonic_ns": mono, "realtime": (mono + self.offset_ns) / 1e9}

    def to_mono(self, wall_ns: int) -> int:
        """A CLOCK_REALTIME stamp (packet sockets) on the kernel's time line."""
        return wall_ns - self.offset_ns

    def wall_ns(self, ts_ns: int) -> int | None:
        """Wall-clock ns since the epoch for a monotonic stamp; None for no stamp."""
        return ts_ns + self.offset_ns if ts_ns > 0 else None

    def wall(self, ts_ns: int) -> float | None:
        ns = self.wall_ns(ts_ns)
        return None if ns is None else ns / 1e9

    def rfc3339(self, ts_ns: int) -> str | None:
        """'2026-05-01T12:00:00.123456789Z' (UTC, ns), for JSON beside ts_ns."""
        ns = self.wall_ns(ts_ns)
        if ns is None:
            return None
        secs, frac = divmod(ns, 1_000_000_000)
        stamp = datetime.datetime.fromtimestamp(secs, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{stamp}.{frac:09d}Z"

    def clock_text(self, ts_ns: int) -> str:
        """'12:00:00.123' in local time, as watch's rows show it; dashes for no stamp."""
        wall = self.wall(ts_ns)
        if wall is None:
            return "--:--:--.---"
        millis = int((wall % 1) * 1000)
        return time.strftime("%H:%M:%S", time.localtime(wall)) + f".{millis:03d}"
