"""Recordings: what `ping --write` / `trace --write` leave behind for `report`.

A recording must let someone reason about an incident later, on another
machine, without root, bcc or scapy. So it is plain JSON lines (greppable,
`jq`-able, appendable while the tool runs, and a crash loses at most the line
being written), self-describing (line 1 says format, version, tool, kernel,
probe plan and start time) and made of the same `model` dataclasses the live
commands use (`model.to_dict` / `from_dict`), so `report` rebuilds paths,
verdicts and findings with the very code the live commands run.

Layout (documented for users in README "Recordings, watch and report"):

    line 1   {"format": "vethtrace-recording", "version": 1, "tool": "vethtrace 0.1.0",
              "kernel": "6.18.0-...", "plan": ..., "started": "2026-...Z",
              "clock": {"monotonic_ns": ..., "realtime": ...}, "command": [...],
              "pcap": "run.pcapng" | null, ...extra keys (e.g. "ping": {...})}
    then     {"type": "topology", "data": <model.Topology>}           once, at start
             {"type": "topology-change", "data": <model.Topology>}    whenever it changed
             {"type": "event", "data": <model.ProbeEvent>}            kernel time order
             {"type": "finding", "data": <model.Finding>}
             {"type": "verdict", "data": <model.Verdict>}
             {"type": "end", "data": {"lost": N, "ended": "...Z", "events": N}}
    the flight recorder's segments add "change", "neigh", "drops" and "note"
    records (vethtrace/recorder/, README "Flight recorder"; `read` skips them)

Writers call `Recorder`; readers call `read`. Unknown record types are skipped
with a note (newer minor additions stay readable); a different major
`version` is refused. Frames sniffed with `--pcap` go to a separate pcapng file
(tshark/wireshark open it directly); the header's "pcap" names it relative to
the recording's directory.

Example:

    with Recorder("run.vtrec", command=sys.argv, plan=plan.describe()) as rec:
        rec.topology(topo)
        for ev in collector:
            rec.event(ev)
        rec.verdict(verdict)
        rec.close(lost=collector.lost)   # or let __exit__ close with lost=0
    rec = read("run.vtrec")              # -> Recording
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vethtrace import __version__
from vethtrace.errors import UserError
from vethtrace.model import Finding, ProbeEvent, Topology, Verdict, from_dict, to_dict

FORMAT = "vethtrace-recording"
VERSION = 1

# Events come in bursts of thousands per second; flushing each one would cost
# a syscall per event. Flushing at least this often bounds what a crash loses.
_FLUSH_EVERY_S = 0.5


def _now_iso() -> str:
    return (
        datetime.datetime.now(datetime.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class Recorder:
    """Writes one recording; thread-safe (sniffer threads and the BPF reader may
    share it). Use as a context manager, or call close() yourself.

    Recorder(path, command=sys.argv, plan=<JSON-able probe plan>, pcap=<pcapng path
    or None>, **extra) — `extra` keys go into the header as they are (ping puts
    {"ping": {"source": ..., "target_netns": ..., "ip": ...}} there so `report`
    can rebuild its verdict). Methods: topology(t, change=False), event(e),
    finding(f), verdict(v), close(lost=0). Raises UserError if the file cannot
    be created.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        command: list[str] | None = None,
        plan: Any = None,
        pcap: str | os.PathLike[str] | None = None,
        **extra: Any,
    ) -> None:
        self.path = Path(path)
        self.events = 0
        self.closed = False
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        try:
            self._file: IO[str] = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise UserError(f"cannot write recording {path}: {exc.strerror}") from None
        header = {
            "format": FORMAT,
            "version": VERSION,
            "tool": f"vethtrace {__version__}",
            "kernel": os.uname().release,
            "plan": to_dict(plan),  # the probe plan object, or whatever JSON the caller has
            "started": _now_iso(),
            # Event times are kernel CLOCK_MONOTONIC; this pair maps them to wall time.
            "clock": {"monotonic_ns": time.monotonic_ns(), "realtime": time.time()},
            "command": list(command) if command is not None else None,
            "pcap": self._relative(pcap) if pcap else None,
        }
        header.update(extra)
        self._write(header, flush=True)

    def _relative(self, pcap: str | os.PathLike[str]) -> str:
        """The pcapng's path as seen from the recording, so both can move together."""
        p = Path(pcap).absolute()
        try:
            return str(p.relative_to(self.path.absolute().parent))
        except ValueError:
            return str(p)

    def _write(self, obj: dict[str, Any], flush: bool = False) -> None:
        line = json.dumps(obj, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            if self.closed:
                return
            self._file.write(line)
            now = time.monotonic()
            if flush or now - self._last_flush >= _FLUSH_EVERY_S:
                self._file.flush()
                self._last_flush = now

    def _record(self, kind: str, data: Any, flush: bool = False) -> None:
        self._write({"type": kind, "data": to_dict(data)}, flush=flush)

    def record(self, kind: str, data: Any, flush: bool = False) -> None:
        """A record of another type (the flight recorder's "change", "drops",
        "neigh", "note": vethtrace/recorder/); `read` skips types it does not know."""
        self._record(kind, data, flush=flush)

    def flush(self) -> None:
        """Write out what is buffered now (raises OSError, e.g. ENOSPC)."""
        with self._lock:
            if not self.closed:
                self._file.flush()
                self._last_flush = time.monotonic()

    def abandon(self) -> None:
        """Close without an end record and without raising (the disk is full:
        what could not be written is lost, what was written stays readable)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            with contextlib.suppress(OSError):
                self._file.close()

    def topology(self, topo: Topology, change: bool = False) -> None:
        """The snapshot at start; later ones (change=True) when namespaces or
        interfaces appeared or vanished."""
        self._record("topology-change" if change else "topology", topo, flush=True)

    def event(self, event: ProbeEvent) -> None:
        self.events += 1
        # Events are most of a recording: leave out unset (None) fields, which
        # from_dict restores as defaults, to keep floods small.
        self._write({"type": "event", "data": _event_dict(event)})

    def finding(self, finding: Finding) -> None:
        self._record("finding", finding, flush=True)

    def verdict(self, verdict: Verdict) -> None:
        self._record("verdict", verdict, flush=True)

    def close(self, lost: int = 0) -> None:
        """Write the end record (lost = events the kernel dropped before we read
        them) and close. Idempotent: the second call does nothing."""
        if self.closed:
            return
        self._write(
            {
                "type": "end",
                "data": {"lost": int(lost), "events": self.events, "ended": _now_iso()},
            },
            flush=True,
        )
        with self._lock:
            self.closed = True
            self._file.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _event_dict(event: ProbeEvent) -> dict[str, Any]:
    """to_dict(event) minus None fields, hand-rolled: at flood rates the generic
    to_dict costs ~20 us an event, this ~4 (same JSON shape, from_dict reads both)."""
    data = {k: v for k, v in event.__dict__.items() if v is not None}
    if "packet" in data:  # every PacketSummary field defaults to None
        data["packet"] = {k: v for k, v in data["packet"].__dict__.items() if v is not None}
    if "neigh" in data:  # NeighChange has required fields that may be None: keep all
        data["neigh"] = dict(data["neigh"].__dict__)
    return data


@dataclass
class Recording:
    """A recording read back. `complete` is False when the end record is missing
    (the writer crashed or was killed); `notes` say what was tolerated."""

    path: str
    header: dict[str, Any]
    topology: Topology | None = None
    topology_changes: list[Topology] = field(default_factory=list)
    events: list[ProbeEvent] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    verdict: Verdict | None = None
    lost: int = 0
    complete: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def pcap_path(self) -> Path | None:
        """Where the header says the pcapng is, resolved against the recording."""
        pcap = self.header.get("pcap")
        if not pcap:
            return None
        return Path(self.path).absolute().parent / pcap


def read(path: str | os.PathLike[str]) -> Recording:
    """Parse a recording. Raises UserError (one clear line) when the file is
    missing, is not a recording, has another version, or is corrupt in the
    middle; a truncated last line or a missing end record is tolerated and
    noted in Recording.notes."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise UserError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{name}: is a directory, not a recording") from None
    except OSError as exc:
        raise UserError(f"{name}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{name}: not a vethtrace recording (not UTF-8 text)") from None
    if not text.strip():
        raise UserError(f"{name}: empty file, not a vethtrace recording")
    lines = text.split("\n")
    ends_cleanly = text.endswith("\n")
    if ends_cleanly:
        lines.pop()  # the empty string after the final newline

    header = _header(name, lines[0], truncated=len(lines) == 1 and not ends_cleanly)
    rec = Recording(path=name, header=header)
    unknown: dict[str, int] = {}
    last = len(lines)
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            kind = obj["type"]
            data = obj["data"]
        except (ValueError, KeyError, TypeError):
            if lineno == last and not ends_cleanly:
                rec.notes.append(
                    f"last line ({lineno}) is truncated: the recording was cut short "
                    f"(crash or kill); kept the {lineno - 2} records before it"
                )
                break
            raise UserError(f"{name}: line {lineno} is corrupt (not a JSON record)") from None
        try:
            _apply(rec, kind, data, unknown)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise UserError(f"{name}: line {lineno}: malformed {kind!r} record ({exc})") from None
    for kind, count in unknown.items():
        rec.notes.append(f"skipped {count} record(s) of unknown type {kind!r} (newer vethtrace?)")
    if not rec.complete:
        rec.notes.append("no end record: the recording was cut short; lost-event count unknown")
    rec.events.sort(key=lambda e: e.ts_ns)  # writers may interleave threads
    return rec


def _header(name: str, line: str, truncated: bool) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except ValueError:
        what = "truncated" if truncated else "not JSON"
        raise UserError(f"{name}: not a vethtrace recording (header line is {what})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise UserError(f"{name}: not a vethtrace recording (no {FORMAT!r} header)")
    version = header.get("version")
    if version != VERSION:
        raise UserError(
            f"{name}: recording format version {version!r}; this vethtrace reads version "
            f"{VERSION} (use a matching vethtrace)"
        )
    return header


def _apply(rec: Recording, kind: str, data: Any, unknown: dict[str, int]) -> None:
    if kind == "event":
        rec.events.append(from_dict(ProbeEvent, data))
    elif kind == "topology":
        rec.topology = from_dict(Topology, data)
    elif kind == "topology-change":
        rec.topology_changes.append(from_dict(Topology, data))
    elif kind == "finding":
        rec.findings.append(from_dict(Finding, data))
    elif kind == "verdict":
        rec.verdict = from_dict(Verdict, data)
    elif kind == "end":
        rec.lost = int(data.get("lost", 0))
        rec.complete = True
    else:
        unknown[kind] = unknown.get(kind, 0) + 1


def write_ping(
    path: str,
    *,
    command: list[str],
    probe_plan: Any,
    pcap: str | None,
    plan: Any,
    topology: Topology,
    events: list[ProbeEvent],
    findings: list[Finding],
    verdict: Verdict | None,
    lost: int,
    warnings: list[str],
    notes: list[str],
    timings: dict[str, float],
) -> None:
    """The recording of a finished `ping`: its context in the header's "ping"
    key (`plan` is ping's expected path, a diagnose.verdict.PingPlan, from
    which `report` re-decides the verdict; warnings, notes and timings are
    what the live run printed besides it), then the topology, every event,
    the findings and the verdict. `probe_plan` is the probe plan's describe()
    (the header's "plan", as `trace --write` writes it), or None."""
    context = {
        "source": plan.source,
        "target_netns": plan.target_netns,
        "ip": plan.ip,
        "count": plan.count,
        "timeout": plan.timeout,
        "size": plan.size,
        "plan": to_dict(plan),
        "warnings": warnings,
        "notes": notes,
        "timings": timings,
    }
    with Recorder(path, command=command, plan=probe_plan, pcap=pcap, ping=context) as rec:
        rec.topology(topology)
        for ev in sorted(events, key=lambda e: e.ts_ns):
            rec.event(ev)
        for f in findings:
            rec.finding(f)
        if verdict is not None:
            rec.verdict(verdict)
        rec.close(lost=lost)
