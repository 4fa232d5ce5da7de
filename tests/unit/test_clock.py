"""vethtrace.clock: the one monotonic -> wall conversion."""

from __future__ import annotations

import time

from vethtrace.clock import Clock


def test_now_converts_to_now_and_back() -> None:
    clock = Clock()
    mono = time.monotonic_ns()
    wall = clock.wall(mono)
    assert wall is not None and abs(wall - time.time()) < 0.05
    assert clock.to_mono(clock.wall_ns(mono) or 0) == mono


def test_no_stamp_is_no_time_not_the_boot_moment() -> None:
    clock = Clock()
    assert clock.wall(0) is None and clock.rfc3339(0) is None
    assert clock.clock_text(0) == "--:--:--.---"


def test_rfc3339_is_utc_with_nanoseconds() -> None:
    clock = Clock(offset_ns=1_700_000_000 * 10**9)
    assert clock.rfc3339(123_456_789) == "2023-11-14T22:13:20.123456789Z"


def test_header_round_trip() -> None:
    clock = Clock()
    again = Clock.from_header(clock.header())
    assert again is not None and abs(again.offset_ns - clock.offset_ns) < 2_000
    assert Clock.from_header({"monotonic_ns": "x"}) is None and Clock.from_header(None) is None
