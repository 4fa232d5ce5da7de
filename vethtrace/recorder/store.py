"""The recording directory: rotating segments within limits of size, age and free disk.

A flight recorder runs for months, so what it writes must stay bounded and
every piece must be readable on its own. The directory holds segments,
`seg-NNNNNN-YYYYmmddTHHMMSSZ.vtrec`: each an ordinary recording (record.py:
header line, then JSON lines, an end record when closed cleanly) that opens
with a full topology snapshot, so any one of them can be read, and the
topology at any moment rebuilt, without the older ones. The sequence number
continues across restarts (the highest found + 1), so sorting by name is
sorting by time even when the clock jumps.

Limits, checked every `tick()` (the loop calls it once a second):
- a segment is closed and the next opened when the records after its
  opening snapshot reach `segment_size` (max_size / 8 by default) or after
  `segment_age` (max_age / 8, at most an hour); a snapshot taking more than
  half of max_size is said once on stderr (a host with many namespaces and
  large rulesets needs a larger --max-size to keep history);
- the oldest segments are deleted while the directory is over `max_size`
  or they ended before now - `max_age`; the one being written never is;
- free space on the filesystem below `min_free` counts as full: the oldest
  segments are deleted to make room, and when none is left to delete the
  store stops writing, says so once on stderr, counts what it could not write
  and retries every RETRY_S. A write that fails with ENOSPC (another process
  filled the disk first) stops writing the same way, and each retry first
  deletes our oldest segment. So the disk is never filled by us, and what is
  kept is always the newest.

A lock file (fcntl) keeps a second recorder out of the same directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vethtrace.errors import UserError
from vethtrace.model import Topology
from vethtrace.record import Recorder

SEGMENT_RE = re.compile(r"seg-(\d{6,})-(\d{8}T\d{6}Z)\.vtrec$")
RETRY_S = 5.0
MAX_SEGMENT_AGE_S = 3600.0
MIN_SEGMENT_SIZE = 64 << 10


def segments(directory: str | os.PathLike[str]) -> list[Path]:
    """The segment files of a recording directory, oldest first."""
    found = []
    for p in Path(directory).iterdir():
        m = SEGMENT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


class SegmentStore:
    """Writes records into the current segment; rotates and prunes (see module doc).

    `snapshot()` returns the full topology a new segment opens with; `header`
    goes into every segment's header (the recorder's options, the probe plan).
    `write(kind, data)` returns False while the store is stalled (disk full)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_size: int,
        max_age: float | None,
        min_free: int,
        snapshot: Callable[[], Topology],
        command: list[str] | None = None,
        plan: Any = None,
        header: dict[str, Any] | None = None,
        segment_size: int | None = None,
        segment_age: float | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.max_size = max_size
        self.max_age = max_age
        self.min_free = min_free
        self.segment_size = segment_size or max(MIN_SEGMENT_SIZE, max_size // 8)
        self.segment_age = segment_age or min(MAX_SEGMENT_AGE_S, (max_age or 8 * 3600) / 8)
        self._snapshot = snapshot
        self._command, self._plan, self._header = command, plan, dict(header or {})
        self._warn = warn or (lambda s: print(f"vethtrace record: {s}", file=sys.stderr))
        self.current: Recorder | None = None
        self._opened = 0.0
        self.stalled: str | None = None  # why nothing is written now
        self.unwritten = 0  # records not written while stalled
        self._stalled_since = 0.0
        self._next_retry = 0.0
        self._enospc = False  # the last failure was a full disk
        self._base = 0  # size of the current segment's opening snapshot
        self.started = 0.0  # wall time in the current segment's header (its start)
        self._said_big = False
        self.deleted: list[str] = []  # segment names pruned (tests, status)
        self.records = 0
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.dir / ".lock", "a+")  # noqa: SIM115
        except OSError as exc:
            raise UserError(
                f"cannot use {self.dir} as a recording directory: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise UserError(f"another recorder is writing to {self.dir}") from None
        found = segments(self.dir)
        m = SEGMENT_RE.match(found[-1].name) if found else None
        self._seq = int(m.group(1)) if m else 0

    # --- writing -------------------------------------------------------------

    def start(self) -> None:
        """Open the first segment (with its snapshot)."""
        self._rotate()

    def write(self, kind: str, data: Any, flush: bool = False) -> bool:
        if self.current is None:
            self.unwritten += 1
            return False
        try:
            self.current.record(kind, data, flush=flush)
        except OSError as exc:
            self._enospc = exc.errno == errno.ENOSPC
            self._stall(f"write failed: {exc.strerror}")
            self.unwritten += 1
            return False
        self.records += 1
        return True

    def tick(self, now: float | None = None) -> None:
        """Rotate, prune and guard the disk (call about once a second)."""
        now = time.time() if now is None else now
        if self.current is None:
            if now >= self._next_retry:
                self._resume(now)
            return
        try:
            self.current.flush()
            size = self.current.path.stat().st_size
        except OSError as exc:
            self._enospc = exc.errno == errno.ENOSPC
            self._stall(f"write failed: {exc.strerror}")
            return
        if size - self._base >= self.segment_size or now - self._opened >= self.segment_age:
            self._rotate()
            return
        self._prune(now)
        if self._free() < self.min_free and not self._make_room():
            self._stall(f"less than {_mib(self.min_free)} free on {self.dir}")

    def close(self, lost: int = 0) -> None:
        """Close the segment; `lost` goes into its end record."""
        self._close_current(lost)
        self._lock.close()

    # --- rotation, pruning, disk ---------------------------------------------

    def _close_current(self, lost: int = 0) -> None:
        if self.current is not None:
            try:
                self.current.close(lost=lost)
            except OSError:
                self.current.abandon()
            self.current = None

    def _rotate(self) -> None:
        self._close_current()
        self._prune(time.time())
        if self._free() < self.min_free and not self._make_room():
            self._stall(f"less than {_mib(self.min_free)} free on {self.dir}")
            return
        topo = self._snapshot()
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = self.dir / f"seg-{self._seq:06d}-{stamp}.vtrec"
        header = {**self._header, "continuous": {"segment": self._seq, "pid": os.getpid()}}
        try:
            self.current = Recorder(path, command=self._command, plan=self._plan, **header)
            self.current.topology(topo)
        except (OSError, UserError) as exc:
            self._enospc = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
            if self.current is not None:
                self.current.abandon()
                self.current = None
            self._stall(f"cannot write {path.name}: {getattr(exc, 'strerror', None) or exc}")
            return
        self._opened = time.time()
        self.started = self.current.started
        try:
            self._base = path.stat().st_size  # the snapshot: not counted for rotation
        except OSError:
            self._base = 0
        if self._base * 2 > self.max_size and not self._said_big:
            self._said_big = True
            self._warn(
                f"a topology snapshot takes {_mib(self._base)}: with --max-size "
                f"{_mib(self.max_size)} little history fits; raise --max-size"
            )

    def _stall(self, why: str) -> None:
        if self.current is not None:
            self.current.abandon()
            self.current = None
        if self.stalled is None:
            self._warn(
                f"{why}: stopped writing (the newest recordings are kept); "
                f"retrying every {RETRY_S:.0f} s"
            )
            self._stalled_since = time.time()
        self.stalled = why
        self._next_retry = time.time() + RETRY_S

    def _resume(self, now: float) -> None:
        self._prune(now)
        if self._enospc:  # someone filled the disk: our oldest data goes first
            olds = segments(self.dir)
            if olds:
                self._delete(olds[0])
            self._enospc = False
        if self._free() < self.min_free and not self._make_room():
            self._next_retry = now + RETRY_S
            return
        was = self.stalled
        self._rotate()
        if self.current is None:
            return  # still full: _stall set the next retry, without saying it again
        self.stalled = None
        note = (
            f"recording resumed: {was} since "
            f"{time.strftime('%H:%M:%S', time.localtime(self._stalled_since))}; "
            f"{self.unwritten} record(s) were not written"
        )
        self._warn(note)
        self.write("note", {"t": now, "text": note}, flush=True)
        self.unwritten = 0

    def _prune(self, now: float) -> None:
        """Delete the oldest segments beyond max_size or max_age (never the current)."""
        current = self.current.path if self.current is not None else None
        olds = [p for p in segments(self.dir) if p != current]
        sizes = {p: _size(p) for p in olds}
        total = sum(sizes.values()) + (_size(current) if current else 0)
        for p in olds:
            too_old = self.max_age is not None and _mtime(p) < now - self.max_age
            if total <= self.max_size and not too_old:
                break
            self._delete(p)
            total -= sizes[p]

    def _make_room(self) -> bool:
        """Delete the oldest segments until min_free is free; False if that is not enough."""
        current = self.current.path if self.current is not None else None
        for p in segments(self.dir):
            if self._free() >= self.min_free:
                return True
            if p != current:
                self._delete(p)
        return self._free() >= self.min_free

    def _delete(self, p: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            self.deleted.append(p.name)

    def _free(self) -> int:
        try:
            st = os.statvfs(self.dir)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return 0
            raise
        return st.f_bavail * st.f_frsize


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"
