"""`report DIR`: the flight recorder's timeline for people and for scripts.

Data in (recorder.timeline.Timeline, the findings of `--at`), text out:
one line per moment, "14:02:11 vt-host: veth0 enslaved to br0 — from then on
312 NEIGH_FAILED drops on veth0", drop runs with a sample packet, then the
drops by place and reason, then check at the moment asked for.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from vethtrace.model import Finding, PacketSummary, Topology, from_dict, to_dict
from vethtrace.recorder.timeline import Line, Timeline
from vethtrace.recorder.when import clock
from vethtrace.render import findings as render_findings

STYLE = {"change": "bold", "neigh": "yellow", "drops": "red", "note": "dim", "recorder": "cyan"}


def line_text(ln: Line) -> str:
    """One timeline line without its time (shared by the terminal and --json)."""
    where = f"{ln.netns}: " if ln.netns else ""
    if ln.kind == "drops":
        on = f" on {ln.iface}" if ln.iface else ""
        until = f", until {clock(ln.until)}" if ln.until is not None and ln.until > ln.t else ""
        sample = f"  e.g. {_packet(ln.sample)}" if ln.sample else ""
        return f"{where}{ln.count} drop{'s' * (ln.count != 1)}{on}: {ln.text}{until}{sample}"
    text = f"{where}{ln.text}"
    if ln.after:
        parts = [f"{n} {reason}" for reason, n in sorted(ln.after.items(), key=lambda x: -x[1])]
        text += f" — from then on {', '.join(parts)} drop{'s' * (sum(ln.after.values()) != 1)}"
        text += f" on {ln.iface}"
    return text


def _packet(sample: dict[str, Any]) -> str:
    try:
        return from_dict(PacketSummary, sample).describe()
    except (TypeError, ValueError, KeyError):
        return "?"


def show(
    console: Console,
    tl: Timeline,
    path: str,
    at: float | None,
    findings: list[Finding] | None,
    topo: Topology | None,
) -> None:
    console.print(Text.assemble(
        ("recorder ", "bold"), path, "  ",
        (f"{clock(tl.since, True)} → {clock(tl.until, True)}", "dim"),
    ))  # fmt: skip
    if not tl.lines:
        console.print(Text("nothing recorded in this window", style="dim"))
    for ln in tl.lines:
        console.print(
            Text.assemble((clock(ln.t), "dim"), " ", (line_text(ln), STYLE.get(ln.kind, ""))),
            soft_wrap=True,
        )
    if tl.places:
        console.print()
        table = Table(title=f"drops by place and reason ({tl.drops})", title_justify="left")
        for col in ("namespace", "interface", "reason", "where", "count", "first", "last"):
            table.add_column(col, justify="right" if col == "count" else "left")
        for p in tl.places:
            table.add_row(p.netns, p.iface, p.reason, p.location, str(p.count), clock(p.first),
                          clock(p.last))  # fmt: skip
        console.print(table)
    for note in tl.notes:
        console.print(Text(f"note: {note}", style="dim"), soft_wrap=True)
    if at is not None and findings is not None and topo is not None:
        console.print()
        console.print(Text(f"check at {clock(at, True)}", style="bold"))
        render_findings.show_check(console, findings, topo, None)


def to_json(
    tl: Timeline, path: str, at: float | None, findings: list[Finding] | None
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "directory": path,
        "since": tl.since,
        "until": tl.until,
        "timeline": [
            {**to_dict(ln), "time": clock(ln.t, True), "line": line_text(ln)} for ln in tl.lines
        ],
        "drops": {"total": tl.drops, "places": [to_dict(p) for p in tl.places]},
        "notes": tl.notes,
    }
    if at is not None and findings is not None:
        obj["check"] = {
            "at": at,
            "time": clock(at, True),
            "findings": [to_dict(f) for f in findings],
        }
    return obj
