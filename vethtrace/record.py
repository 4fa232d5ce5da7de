"""Recordings: what `ping --write` / `trace --write` leave behind for `report`.

(Over 400 lines on purpose: the writer, the reader and the reader's checks of
every header and record field are one file format, kept in one place.)

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
             {"type": "lost", "data": {"lost", "total", "ts_ns", "time"}}   as it happens
             {"type": "scope", "data": {"change", "netns", "inode", "interface", "left",
                                        "ts_ns", "time"}}               a namespace vanished…
             {"type": "end", "data": {"lost": N, "ended": "...Z", "events": N,
                                      "interrupted": "SIGINT" (only when cut short),
                                      "ping": {"notes": [...], "timings": {...}}}}
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
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vethtrace import __version__
from vethtrace.clock import Clock
from vethtrace.errors import UserError
from vethtrace.model import (
    ID_FIELDS,
    Finding,
    NftraceEvent,
    ProbeEvent,
    Topology,
    Verdict,
    from_dict,
    hex_id,
    to_dict,
)

FORMAT = "vethtrace-recording"
NOTICES = ("lost", "scope")  # record types about the run itself (Recorder.notice)
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
            "clock": Clock().header(),
            "command": list(command) if command is not None else None,
            "pcap": self._relative(pcap) if pcap else None,
        }
        header.update(extra)
        self.started: float = header["clock"]["realtime"]  # what readers call its start
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

    def topology(self, topo: Topology, change: bool = False) -> None:
        """The snapshot at start; later ones (change=True) when namespaces or
        interfaces appeared or vanished."""
        self._record("topology-change" if change else "topology", topo, flush=True)

    def event(self, event: ProbeEvent) -> None:
        self.events += 1
        # Events are most of a recording: leave out unset (None) fields, which
        # from_dict restores as defaults, to keep floods small.
        self._write({"type": "event", "data": _event_dict(event)})

    def notice(self, kind: str, data: dict[str, Any]) -> None:
        """What happened to the run itself, when it happened: "lost" (events
        the kernel could not deliver since the last one: lost, total) or
        "scope" (a traced namespace or interface vanished or came back)."""
        self._write({"type": kind, "data": data}, flush=True)

    def nftrace(self, event: NftraceEvent) -> None:
        """A rule verdict from the kernel's nftables trace (`--nftrace`)."""
        data = {k: v for k, v in to_dict(event).items() if v is not None}
        self._write({"type": "nftrace", "data": data})

    def finding(self, finding: Finding) -> None:
        self._record("finding", finding, flush=True)

    def verdict(self, verdict: Verdict) -> None:
        self._record("verdict", verdict, flush=True)

    def flush(self) -> None:
        """Push what was written to the file now (a kill loses nothing before it)."""
        with self._lock:
            if not self.closed:
                self._file.flush()
                self._last_flush = time.monotonic()

    def abandon(self) -> None:
        """Close without an end record (the file is about to be rewritten, or the
        disk is full: then what is still buffered is lost, without raising)."""
        with self._lock:
            if not self.closed:
                self.closed = True
                with contextlib.suppress(OSError):
                    self._file.close()

    def close(self, lost: int = 0, interrupted: str | None = None, **extra: Any) -> None:
        """Write the end record (lost = events the kernel dropped before we read
        them; interrupted = the signal that cut the run short, e.g. "SIGTERM";
        `extra` keys as they are, e.g. ping's "ping": {"notes", "timings"}) and
        close. Idempotent: the second call does nothing."""
        if self.closed:
            return
        data: dict[str, Any] = {"lost": int(lost), "events": self.events, "ended": _now_iso()}
        if interrupted:
            data["interrupted"] = interrupted
        data.update(extra)
        self._write({"type": "end", "data": data}, flush=True)
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
    for key in ID_FIELDS:  # 64-bit addresses as hex strings, as trace --json has them
        data[key] = hex_id(data[key])
    if "packet" in data:  # every PacketSummary field defaults to None
        data["packet"] = {k: v for k, v in data["packet"].__dict__.items() if v is not None}
        if "encap" in data["packet"]:  # a tunnel's outer headers (rare: generic is fine)
            data["packet"]["encap"] = to_dict(data["packet"]["encap"])
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
    nftrace: list[NftraceEvent] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    verdict: Verdict | None = None
    lost: int = 0
    complete: bool = False
    interrupted: str | None = None  # the signal that cut the run short (end record)
    notes: list[str] = field(default_factory=list)
    # "lost" and "scope" records, as written: {"type": ..., **data}, in file order
    notices: list[dict[str, Any]] = field(default_factory=list)

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
    for key, check in _HEADER.items():
        value = header.get(key)
        if value is not None and not check(value):
            raise UserError(f"{name}: malformed header: {key!r} is {_short(value)}")
    for section, fields in (("ping", _PING), ("trace", _TRACE)):
        ctx = header.get(section)
        if ctx is None:
            continue
        if not isinstance(ctx, dict):
            raise UserError(f"{name}: malformed header: {section!r} is not an object")
        for key, check in fields.items():
            value = ctx.get(key)
            if value is not None and not check(value):
                raise UserError(f"{name}: malformed header: {section}.{key} is {_short(value)}")
    return header


# What `report` reads from the header, and what each must be (absent is fine).
def _str(v: Any) -> bool:
    return isinstance(v, str)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _strs(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


_HEADER = {
    "tool": _str, "kernel": _str, "started": _str, "pcap": _str, "command": _strs,
    "clock": lambda v: isinstance(v, dict) and all(_num(x) for x in v.values()),
}  # fmt: skip
_PING = {
    "source": _str, "target_netns": _str, "ip": _str, "count": _int, "timeout": _num,
    "size": _int, "plan": lambda v: isinstance(v, dict), "warnings": _strs, "notes": _strs,
    "timings": lambda v: isinstance(v, dict) and all(_num(x) for x in v.values()),
    "check_netns": _strs,
}  # fmt: skip
_TRACE = {"filter": _str, "netns": _strs}


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _ids(data: dict[str, Any]) -> dict[str, Any]:
    """skb/head: hex strings since issue #20, integers in older recordings."""
    if not isinstance(data, dict):
        return data  # from_dict(strict=True) says what is wrong with it
    for key in ID_FIELDS:
        if isinstance(data.get(key), str):
            try:
                data[key] = int(data[key], 16)
            except ValueError:
                raise ValueError(f"{key}: expected a hex id, got {_short(data[key])}") from None
    return data


def _apply(rec: Recording, kind: str, data: Any, unknown: dict[str, int]) -> None:
    # strict: every field is checked against its type (a hand-edited recording
    # fails here, on its line, not later in a sort or a renderer)
    if kind == "event":
        rec.events.append(from_dict(ProbeEvent, _ids(data), strict=True))
    elif kind == "topology":
        rec.topology = from_dict(Topology, data, strict=True)
    elif kind == "topology-change":
        rec.topology_changes.append(from_dict(Topology, data, strict=True))
    elif kind == "nftrace":
        rec.nftrace.append(from_dict(NftraceEvent, data, strict=True))
    elif kind == "finding":
        rec.findings.append(from_dict(Finding, data, strict=True))
    elif kind == "verdict":
        rec.verdict = from_dict(Verdict, data, strict=True)
    elif kind in NOTICES:
        rec.notices.append({"type": kind, **dict(data)})
    elif kind == "end":
        lost = data.get("lost", 0)
        if not _int(lost) or lost < 0:
            raise ValueError(f"lost: expected a count, got {_short(lost)}")
        rec.lost = lost
        rec.complete = True
        interrupted = data.get("interrupted")
        if interrupted is not None and not _str(interrupted):
            raise ValueError(f"interrupted: expected a string, got {_short(interrupted)}")
        rec.interrupted = interrupted
        # ping writes what it learns only at the end (its notes and timings) here;
        # older recordings had them in the header: the reader sees them there.
        extra = data.get("ping")
        if isinstance(extra, dict) and isinstance(rec.header.get("ping"), dict):
            for key, value in extra.items():
                check = _PING.get(key)
                if check is not None and not check(value):
                    raise ValueError(f"ping.{key}: unexpected {_short(value)}")
            rec.header["ping"].update(extra)
    else:
        unknown[kind] = unknown.get(kind, 0) + 1


def ping_context(plan: Any, warnings: list[str], nftrace: bool = False) -> dict[str, Any]:
    """The header's "ping" key: ping's context (`plan` is its expected path, a
    diagnose.verdict.PingPlan, from which `report` re-decides the verdict;
    `nftrace`: the run asked the kernel's nftables trace, so report names the
    rule from the recorded verdicts, not from the model)."""
    return {
        "source": plan.source,
        "target_netns": plan.target_netns,
        "ip": plan.ip,
        "count": plan.count,
        "timeout": plan.timeout,
        "size": plan.size,
        "plan": to_dict(plan),
        "warnings": warnings,
        "nftrace": nftrace,
    }


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
    nftrace: list[NftraceEvent] | None = None,
    traced: bool = False,
) -> None:
    """The recording of a finished `ping` in one go (tests, tools); the ping
    command itself writes as it goes (commands/ping_files.py), in the same
    shape: the header with the context, the topology, every event, the
    findings, the verdict, and the end record with the run's notes and timings.
    `probe_plan` is the probe plan's describe() (the header's "plan"), or None."""
    context = ping_context(plan, warnings, traced or bool(nftrace))
    with Recorder(path, command=command, plan=probe_plan, pcap=pcap, ping=context) as rec:
        rec.topology(topology)
        for ev in sorted(events, key=lambda e: e.ts_ns):
            rec.event(ev)
        for nev in nftrace or []:
            rec.nftrace(nev)
        for f in findings:
            rec.finding(f)
        if verdict is not None:
            rec.verdict(verdict)
        rec.close(lost=lost, ping={"notes": notes, "timings": timings})
