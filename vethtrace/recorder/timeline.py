"""What happened, in order: topology changes with the drops that followed them.

Pure logic over a RecorderDir's entries (no I/O), for `report DIR`:

- `Line`s in time order: each change (one per changed thing, "veth0
  enslaved to br0"), neighbours going INCOMPLETE/FAILED, notes (lost
  events, disk full), the recorder starting and stopping, and drop *runs*:
  consecutive seconds of drops at one place for one reason become one line
  ("312 drops on veth0: NEIGH_FAILED at neigh_invalidate, until 14:03:10");
- after a change about an interface, "from then on": the drops on that
  interface until the next change to it, by reason. That is the
  correlation people do by hand when they read `dmesg` next to a change log,
  and it is exactly what the flight recorder exists for;
- `places`: drops by place and reason over the whole window (first, last,
  count), the table at the end of the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vethtrace.recorder.segments import Entry, RecorderDir

RUN_GAP_S = 2.0  # drops at one place at most this far apart belong to one run
# Changes that can explain drops on their interface (not routes or FDB entries,
# which a link change drags along).
ATTRIBUTED = frozenset({"link", "addr", "port"})


@dataclass
class Line:
    t: float
    netns: str  # the namespace's name ("" for the recorder's own lines)
    kind: str  # change | neigh | drops | note | recorder
    text: str
    iface: str | None = None
    what: str = ""  # change: link | addr | route | fdb | port | netns
    after: dict[str, int] = field(default_factory=dict)  # change: drops that followed, by reason
    count: int = 0  # drops: how many in the run
    until: float | None = None  # drops: last second of the run
    sample: dict[str, Any] | None = None


@dataclass
class Place:
    netns: str
    iface: str
    reason: str
    location: str
    count: int
    first: float
    last: float


@dataclass
class Timeline:
    since: float
    until: float
    lines: list[Line]
    places: list[Place]
    drops: int
    notes: list[str]


def build(rd: RecorderDir, since: float, until: float, netns: list[str]) -> Timeline:
    entries = [e for e in rd.entries if since <= e.t <= until and _wanted(e, netns)]
    lines: list[Line] = []
    drops = [e for e in entries if e.kind == "drops"]
    for e in entries:
        if e.kind == "change":
            lines += _change_lines(e)
        elif e.kind == "neigh":
            d = e.data
            was = f" (was {d['old_state']})" if d.get("old_state") else ""
            mac = f" lladdr {d['lladdr']}" if d.get("lladdr") else ""
            text = f"neighbour {d['address']} on {d['ifname']} {d['state']}{mac}{was}"
            lines.append(Line(e.t, d["name"], "neigh", text, d["ifname"]))
        elif e.kind == "note":
            lines.append(Line(e.t, "", "note", e.data.get("text", "")))
    lines += _runs(drops)
    lines += _recorder_lines(rd, since, until)
    _attribute(lines, drops)
    lines.sort(key=lambda ln: (ln.t, ln.kind != "recorder", ln.kind == "drops"))
    return Timeline(since, until, lines, _places(drops), sum(e.data["count"] for e in drops),
                    list(rd.notes))  # fmt: skip


def _wanted(e: Entry, netns: list[str]) -> bool:
    if not netns or e.kind == "note":
        return True
    return e.data.get("name") in netns or str(e.data.get("netns")) in netns


def _change_lines(e: Entry) -> list[Line]:
    d = e.data
    return [
        Line(e.t, d["name"], "change", c["text"], c.get("iface"), c.get("kind", ""))
        for c in d["changes"]
    ]


def _key(d: dict[str, Any]) -> tuple[int, str, str, str]:
    return (d["netns"], d.get("ifname") or "", d["reason"], d["location"])


def _runs(drops: list[Entry]) -> list[Line]:
    """Consecutive seconds at one place, one reason -> one line."""
    open_runs: dict[tuple[int, str, str, str], Line] = {}
    out: list[Line] = []
    for e in drops:
        d = e.data
        k = _key(d)
        run = open_runs.get(k)
        if run is not None and run.until is not None and e.t - run.until <= RUN_GAP_S:
            run.count += d["count"]
            run.until = e.t
            continue
        iface = d.get("ifname") or ""
        run = Line(e.t, d["name"], "drops", "", iface or None, count=d["count"], until=e.t,
                   sample=d.get("sample"))  # fmt: skip
        run.text = f"{d['reason']} at {d['location']}"
        open_runs[k] = run
        out.append(run)
    return out


def _recorder_lines(rd: RecorderDir, since: float, until: float) -> list[Line]:
    out: list[Line] = []
    prev = None
    for seg in rd.segments:
        if since <= seg.started <= until and (prev is None or prev.pid != seg.pid):
            word = "recorder started" if prev is None else "recorder restarted"
            out.append(Line(seg.started, "", "recorder", word))
        stopped = prev is not None and prev.pid != seg.pid and not prev.complete
        if stopped and prev is not None and since <= prev.last <= until:
            out.append(Line(prev.last, "", "recorder", "recorder stopped without closing"))
        if seg.lost and since <= seg.last <= until:
            out.append(Line(seg.last, "", "note", f"{seg.lost} kernel event(s) lost"))
        prev = seg
    return out


def _attribute(lines: list[Line], drops: list[Entry]) -> None:
    """For each change about an interface: the drops on it until the next change to it."""
    changes = sorted((ln for ln in lines if ln.kind == "change" and ln.iface), key=lambda x: x.t)
    said: set[tuple[float, str, str | None]] = set()
    for i, ch in enumerate(changes):
        if ch.what not in ATTRIBUTED or (ch.t, ch.netns, ch.iface) in said:
            continue  # one "from then on" per re-read and interface, on its first change
        said.add((ch.t, ch.netns, ch.iface))
        nxt = next(
            (
                c.t
                for c in changes[i + 1 :]
                if c.netns == ch.netns and c.iface == ch.iface and c.t > ch.t
            ),
            None,
        )
        for e in drops:
            d = e.data
            if d["name"] != ch.netns or (d.get("ifname") or "") != ch.iface:
                continue
            if e.t + 1 < ch.t or (nxt is not None and e.t >= nxt):
                continue  # a drop bucket is one second: the change's own second counts
            ch.after[d["reason"]] = ch.after.get(d["reason"], 0) + d["count"]


def _places(drops: list[Entry]) -> list[Place]:
    places: dict[tuple[int, str, str, str], Place] = {}
    for e in drops:
        d = e.data
        k = _key(d)
        p = places.get(k)
        if p is None:
            places[k] = Place(d["name"], k[1] or "-", d["reason"], d["location"], d["count"],
                              e.t, e.t)  # fmt: skip
        else:
            p.count += d["count"]
            p.last = max(p.last, e.t)
    return sorted(places.values(), key=lambda p: -p.count)
