"""Sizes, durations and moments as people type them: 100M, 7d, 10m, 14:02:11.

One parser for the recorder's limits and report's window, so `--max-age 2h`
and `--since 2h` mean the same. Bad text raises UserError (exit 2).
"""

from __future__ import annotations

import datetime
import re

from vethtrace.errors import UserError

_SIZE = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SPAN = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str, what: str = "size") -> int:
    """'100M' -> bytes (K, M, G, T are powers of 1024; 'iB'/'B' suffixes allowed)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise UserError(f"{what} {text!r}: expected a number with K, M, G or T (e.g. 100M)")
    return int(float(m.group(1)) * _SIZE[m.group(2)])


def parse_duration(text: str, what: str = "duration") -> float:
    """'10m' -> 600.0 seconds (s, m, h, d, w; a bare number is seconds)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if not m:
        raise UserError(f"{what} {text!r}: expected a duration such as 30s, 10m, 2h or 7d")
    return float(m.group(1)) * _SPAN[m.group(2)]


def parse_moment(text: str, now: float, what: str = "time") -> float:
    """A moment as epoch seconds: a duration back from now ('10m'), a time of
    day today in local time ('14:02' or '14:02:11', yesterday when that is
    still to come), an ISO date-time ('2026-12-06T14:02:11', 'Z' or an offset
    allowed; local time without one) or epoch seconds ('@1796000000')."""
    t = text.strip()
    if t.startswith("@"):
        try:
            return float(t[1:])
        except ValueError:
            raise UserError(f"{what} {text!r}: expected @EPOCH-SECONDS") from None
    if re.fullmatch(r"\d+(\.\d+)?\s*[smhdw]?", t.lower()):
        return now - parse_duration(t, what)
    m = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2})(\.\d+)?)?", t)
    if m:
        day = datetime.datetime.fromtimestamp(now).astimezone()
        try:
            at = day.replace(
                hour=int(m.group(1)), minute=int(m.group(2)), second=int(m.group(3) or 0),
                microsecond=int(float(m.group(4) or 0) * 1e6),
            )  # fmt: skip
        except ValueError:
            raise UserError(f"{what} {text!r}: not a time of day (HH:MM[:SS])") from None
        if at.timestamp() > now + 1:
            at -= datetime.timedelta(days=1)
        return at.timestamp()
    try:
        dt = datetime.datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"{what} {text!r}: expected 10m, 14:02:11, 2026-12-06T14:02:11 or @EPOCH"
        ) from None
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return dt.timestamp()


def clock(t: float, with_date: bool = False) -> str:
    """Local wall time of an epoch moment, as the timeline prints it."""
    fmt = "%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S"
    return datetime.datetime.fromtimestamp(t).strftime(fmt)
