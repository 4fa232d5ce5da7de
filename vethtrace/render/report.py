"""How `vethtrace report` shows a recording: which run it is, and for a trace
recording, trace's own lines followed by the packet paths and findings.

A ping recording is shown by render.ping (as the live ping was); this module
adds the banner and the `recording` object of --json, and the trace
recording's view. Data in, text out: the command rebuilt paths and findings.
"""

from __future__ import annotations

import json
import os
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from vethtrace.clock import Clock
from vethtrace.model import Finding, PacketPath, Topology, to_dict
from vethtrace.record import Recording
from vethtrace.render import findings as render_findings
from vethtrace.render import trace as render_trace
from vethtrace.render.packet_rows import NameShortener, hop_chain, outcome_text, short_packet


def trace_json(
    rec: Recording,
    names: render_trace.NetnsNames,
    paths: list[PacketPath],
    findings: list[Finding],
    notes: list[str],
) -> dict[str, Any]:
    """A trace recording's --json object: its events as `trace --json` printed
    them, then the paths they make up and the findings."""
    clock = Clock.from_header(rec.header.get("clock"))
    return {
        "recording": recording_json(rec),
        "events": [json.loads(render_trace.json_line(e, names, clock)) for e in rec.events],
        "lost": rec.lost if rec.complete else None,
        "paths": [path_json(p) for p in paths],
        "findings": [to_dict(f) for f in findings],
        "notes": notes,
    }


def show_trace(
    console: Console,
    rec: Recording,
    names: render_trace.NetnsNames,
    paths: list[PacketPath],
    findings: list[Finding],
    notes: list[str],
    notes_to: Console | None = None,
) -> None:
    """trace's event lines and summary, then what trace cannot show while it
    streams: the packet paths, and the static findings; notes on `notes_to`."""
    assert rec.topology is not None
    banner(console, rec)
    console.print(render_trace.HEADER, style="bold", highlight=False)
    summary = render_trace.Summary()
    t0 = rec.events[0].ts_ns if rec.events else 0
    for ev in rec.events:
        summary.add(ev)
        console.print(render_trace.line(ev, t0, names), soft_wrap=True)
    span = (rec.events[-1].ts_ns - t0) / 1e9 if rec.events else 0.0
    summary.render(console, rec.lost, span)
    console.print()
    print_paths(console, paths, rec.topology)
    console.print()
    render_findings.render_findings(console, findings, show_info=False)
    for n in notes:
        (notes_to or console).print(Text(f"note: {n}", "dim"))


def path_json(p: PacketPath) -> dict[str, Any]:
    return {
        "kind": p.kind,
        "outcome": p.outcome,
        "drop_reason": p.drop_reason,
        "packet": p.summary.describe() if p.summary else None,
        "hops": [to_dict(h) for h in p.hops],
    }


def print_paths(console: Console, paths: list[PacketPath], topo: Topology) -> None:
    """One row per packet, as watch shows them (same hop chains and words)."""
    short = NameShortener(topo)
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("ms", justify="right", no_wrap=True, min_width=8)
    table.add_column("packet", no_wrap=True, overflow="ellipsis", max_width=32)
    table.add_column("path", no_wrap=True, overflow="ellipsis", min_width=24)
    table.add_column("outcome", no_wrap=True, min_width=22)
    t0 = paths[0].first_ns if paths else 0
    for p in paths:
        table.add_row(
            f"{(p.first_ns - t0) / 1e6:+.1f}",
            short_packet(p),
            hop_chain(p, short),
            outcome_text(p),
        )
    console.print(Text(f"{len(paths)} packet path(s)", "bold"))
    if paths:
        console.print(table)


def banner(console: Console, rec: Recording) -> None:
    """Which run this is: the reader may be far from the machine it came from."""
    h = rec.header
    command = " ".join(h.get("command") or []) or "?"
    console.print(
        Text.assemble(
            ("recording ", "dim"),
            (os.path.basename(rec.path), "dim bold"),
            (f": {h.get('tool', '?')} on kernel {h.get('kernel', '?')}, ", "dim"),
            (f"{h.get('started', '?')}, `{_short_command(command)}`", "dim"),
        )
    )


def _short_command(command: str) -> str:
    parts = command.split()
    if parts and parts[0].endswith("/vethtrace"):
        parts[0] = "vethtrace"
    return " ".join(parts)


def recording_json(rec: Recording) -> dict[str, Any]:
    h = rec.header
    return {
        "file": os.path.basename(rec.path),
        "version": h.get("version"),
        "tool": h.get("tool"),
        "kernel": h.get("kernel"),
        "started": h.get("started"),
        "command": h.get("command"),
        "plan": h.get("plan"),
        "pcap": h.get("pcap"),
        "complete": rec.complete,
        "interrupted": rec.interrupted,
        "lost": rec.lost if rec.complete else None,
        "notes": rec.notes,
    }
