"""Reading a recorder's directory back: records in time order, and the topology at any moment.

Runs without root, bcc or scapy, like `report FILE`. Tolerant by design: a
flight recorder's directory is read after crashes, kills and full disks, so
a segment cut short (no end record, a truncated last line) is read up to the
cut and noted, a segment that is not a recording is skipped with a note, and
a gap between a segment without an end and the next one is shown as the
recorder having been stopped. Only a directory with no readable segment at
all is an error.

Topology at T: each segment opens with a full snapshot, and every "change"
record carries the namespace as re-read after the change (or its removal),
so the topology at T is the last snapshot at or before T with the changes
up to T applied, namespace by namespace (`topology_at`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vethtrace.errors import UserError
from vethtrace.model import Namespace, Topology, from_dict
from vethtrace.record import FORMAT, VERSION
from vethtrace.recorder.store import segments

KINDS = ("change", "neigh", "drops", "note")


@dataclass
class Entry:
    t: float
    kind: str  # change | neigh | drops | note | start | stop
    data: dict[str, Any]


@dataclass
class Segment:
    path: Path
    started: float
    pid: int | None
    complete: bool
    last: float  # time of its last record
    topology: dict[str, Any] | None = None  # raw, decoded on demand
    lost: int = 0


@dataclass
class RecorderDir:
    path: str
    segments: list[Segment] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)  # time order
    notes: list[str] = field(default_factory=list)

    @property
    def first(self) -> float:
        return self.segments[0].started if self.segments else 0.0

    @property
    def last(self) -> float:
        return max((s.last for s in self.segments), default=0.0)

    def topology_at(self, t: float) -> Topology:
        """The topology as it was at t (see module doc). UserError when no
        segment covers t."""
        base = [s for s in self.segments if s.started <= t and s.topology is not None]
        if not base:
            raise UserError(
                f"{self.path}: nothing recorded at or before that moment "
                f"(the recording starts {_iso(self.first)})"
            )
        seg = base[-1]
        assert seg.topology is not None
        topo = from_dict(Topology, seg.topology)
        spaces = {ns.inode: ns for ns in topo.namespaces}
        for e in self.entries:
            if e.kind != "change" or e.t < seg.started or e.t > t:
                continue
            if e.data.get("action") == "removed":
                spaces.pop(e.data["netns"], None)
            elif e.data.get("namespace"):
                spaces[e.data["netns"]] = from_dict(Namespace, e.data["namespace"])
        topo.namespaces = list(spaces.values())
        topo.taken_at = t
        return topo


def read_dir(path: str, since: float | None = None, until: float | None = None) -> RecorderDir:
    """Read the segments of a directory that may hold records in [since, until]."""
    found = segments(path)
    if not found:
        raise UserError(f"{path}: is a directory with no recorder segments (seg-*.vtrec)")
    rd = RecorderDir(path)
    for i, p in enumerate(found):
        try:
            ends = os.stat(p).st_mtime
        except OSError:
            continue
        if since is not None and ends < since:
            continue  # wholly before the window (but keep it if --at needs it? see below)
        seg = _read_segment(p, rd, since, until)
        if seg is None:
            continue
        rd.segments.append(seg)
        if until is not None and seg.started > until:
            break
        if i + 1 < len(found) and not seg.complete:
            rd.notes.append(f"{p.name} has no end: the recorder was stopped without closing it")
    if not rd.segments:
        if since is not None:
            return _older(path, found, rd)
        raise UserError(f"{path}: no readable recorder segment")
    rd.entries.sort(key=lambda e: e.t)
    return rd


def _older(path: str, found: list[Path], rd: RecorderDir) -> RecorderDir:
    """The window is after the last segment ended: the newest one still says
    what the topology was (nothing happened since it stopped)."""
    seg = _read_segment(found[-1], rd, None, None)
    if seg is None:
        raise UserError(f"{path}: no readable recorder segment")
    rd.segments.append(seg)
    rd.entries.sort(key=lambda e: e.t)
    return rd


def _read_segment(
    p: Path, rd: RecorderDir, since: float | None, until: float | None
) -> Segment | None:
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        rd.notes.append(f"{p.name}: cannot read ({exc.strerror}); skipped")
        return None
    lines = text.split("\n")
    try:
        header = json.loads(lines[0])
    except ValueError:
        rd.notes.append(f"{p.name}: header is not JSON (cut short?); skipped")
        return None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        rd.notes.append(f"{p.name}: not a vethtrace recording; skipped")
        return None
    if header.get("version") != VERSION:
        rd.notes.append(f"{p.name}: format version {header.get('version')!r}; skipped")
        return None
    clock = header.get("clock") or {}
    started = float(clock.get("realtime") or 0.0)
    cont = header.get("continuous") or {}
    seg = Segment(p, started, cont.get("pid"), complete=False, last=started)
    bad = 0
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            kind, data = obj["type"], obj["data"]
        except (ValueError, KeyError, TypeError):
            if lineno < len(lines) - 1:
                bad += 1
            continue  # the truncated last line of a segment cut short
        if kind == "topology":
            seg.topology = data
            continue
        if kind == "end":
            seg.complete = True
            seg.lost = int(data.get("lost") or 0)
            continue
        if kind not in KINDS or not isinstance(data, dict) or "t" not in data:
            continue
        t = float(data["t"])
        seg.last = max(seg.last, t)
        if (since is None or t >= since) and (until is None or t <= until):
            rd.entries.append(Entry(t, kind, data))
    if bad:
        rd.notes.append(f"{p.name}: {bad} corrupt line(s) skipped")
    if not seg.complete:
        seg.last = max(seg.last, p.stat().st_mtime)
    return seg


def _iso(t: float) -> str:
    from vethtrace.recorder.when import clock

    return clock(t, with_date=True)
