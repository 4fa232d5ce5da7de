"""`vethtrace report FILE [--json]`: the live command's output, rebuilt from a recording.

Runs anywhere, as anyone: no root, no bcc, no scapy (nothing on this path
imports them; tests poison both and run it as `nobody`). Everything is
recomputed from the recorded data with the code the live commands use —
packet paths (correlate), the ping verdict (diagnose.verdict.decide), the
static findings (check's rules on the recorded topology) — and printed by the
live commands' own renderers. So a recording made on a user's machine and
reported on a developer's laptop reads exactly like the original run, and a
newer vethtrace can re-judge an old incident. Where the rebuilt verdict or
findings differ from what was recorded, a note says so.
"""

from __future__ import annotations

import json
import os
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from vethtrace.console import make_console
from vethtrace.errors import ExitStatus, UserError
from vethtrace.model import Finding, PacketPath, Topology, from_dict, to_dict
from vethtrace.record import Recording, read


def run(file: str, as_json: bool = False) -> int:
    rec = read(file)
    notes = list(rec.notes)
    if isinstance(rec.header.get("ping"), dict):
        if rec.topology is None:
            raise UserError(f"{file}: the ping recording has no topology record (cut short?)")
        return _ping(rec, notes, as_json)
    if rec.topology is None:  # trace records events even when discovery failed
        notes.append("no topology was recorded: namespaces appear as inodes, no static checks")
        rec.topology = Topology()
    findings, check_note = _findings(rec, _trace_scope(rec))
    if check_note:
        notes.append(check_note)
    return _trace(rec, findings, notes, as_json)


def _trace_scope(rec: Recording) -> list[str] | None:
    trace = rec.header.get("trace")
    names = trace.get("netns") if isinstance(trace, dict) else None
    return list(names) if names else None


def _findings(rec: Recording, names: list[str] | None) -> tuple[list[Finding], str | None]:
    """check's rules re-run on the recorded topology, over the namespaces the
    live command checked; the recorded findings when the rules cannot run here.
    A difference is worth a note: the rules changed since the recording."""
    assert rec.topology is not None
    try:
        from vethtrace.diagnose.check import run_rules

        fresh = run_rules(rec.topology, names)
    except ImportError as exc:
        return rec.findings, f"static checks unavailable here ({exc}); showing the recorded ones"
    except (UserError, KeyError, TypeError, ValueError, AttributeError) as exc:
        # e.g. a recording from another version whose topology the rules cannot read
        return rec.findings, f"static checks failed here ({exc}); showing the recorded ones"
    recorded = {(f.rule, f.netns, f.interface) for f in rec.findings}
    now = {(f.rule, f.netns, f.interface) for f in fresh}
    if rec.findings and recorded != now:
        added = sorted(r for r, *_ in now - recorded)
        gone = sorted(r for r, *_ in recorded - now)
        return fresh, (
            "check on the recorded topology differs from the recording"
            + (f"; new: {', '.join(added)}" if added else "")
            + (f"; no longer: {', '.join(gone)}" if gone else "")
        )
    return fresh, None


# --- ping recordings ---------------------------------------------------------------


def _ping(rec: Recording, notes: list[str], as_json: bool) -> int:
    from vethtrace.diagnose.verdict import PingPlan, judge
    from vethtrace.render import ping as render

    assert rec.topology is not None
    meta: dict[str, Any] = rec.header["ping"]
    try:
        plan = from_dict(PingPlan, meta["plan"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{rec.path}: the ping header has no usable plan ({exc})") from None
    findings, check_note = _findings(rec, _ping_scope(meta, plan, rec.topology))
    if check_note:
        notes.append(check_note)
    decision = judge(plan, rec.events, rec.topology, findings, final=True)
    verdict = decision.verdict
    if rec.verdict is not None and verdict is not None and rec.verdict.kind != verdict.kind:
        notes.append(
            f"the recorded run said {rec.verdict.kind}; rebuilt from its events: {verdict.kind}"
        )
    if not rec.complete:
        notes.append("events after the cut are missing: the verdict may be incomplete")
    if rec.lost:
        notes.append(f"{rec.lost} kernel event(s) were lost while recording")
    # What the live run printed besides the verdict: its warnings, notes and timings.
    warnings = list(meta.get("warnings") or [])
    notes = [*(meta.get("notes") or []), *notes]
    timings = meta.get("timings") or None
    report = render.PingReport(
        plan, verdict, rec.events, rec.topology, findings, warnings, notes, timings,
        decision.analysis,
    )  # fmt: skip
    if as_json:
        obj = render.to_json(report)
        obj["recording"] = _recording_json(rec)
        print(json.dumps(obj, indent=2))
    else:
        console = make_console()
        _banner(console, rec)
        render.show(console, report)
    if verdict is None:
        return int(ExitStatus.FINDINGS)
    return int(ExitStatus.OK if verdict.reachable else ExitStatus.FINDINGS)


def _ping_scope(meta: dict[str, Any], plan: Any, topo: Topology) -> list[str]:
    """The namespaces ping ran check on: those its path crosses (as ping does)."""
    if meta.get("check_netns"):
        return list(meta["check_netns"])
    names = set()
    for key in plan.path:
        ns = topo.netns(key.netns)
        if ns is not None:
            names.add(ns.name)
    return sorted(names) or [plan.source]


# --- trace recordings --------------------------------------------------------------


def _trace(
    rec: Recording, findings: list[Finding], notes: list[str], as_json: bool
) -> int:
    """trace's event lines and summary, then what trace cannot show while it
    streams: the packet paths the events make up, and the static findings."""
    from vethtrace.correlate import correlate
    from vethtrace.diagnose.verdict import mark_diversion
    from vethtrace.render import findings as render_findings
    from vethtrace.render import trace as render_trace

    assert rec.topology is not None
    paths = correlate(rec.events, rec.topology)
    for p in paths:
        mark_diversion(p, rec.topology)
    if not rec.complete:
        notes.append("events after the cut are missing")
    names = _recorded_names(rec.topology, rec.topology_changes)
    if as_json:
        obj = {
            "recording": _recording_json(rec),
            "events": [json.loads(render_trace.json_line(e, names)) for e in rec.events],
            "lost": rec.lost if rec.complete else None,
            "paths": [_path_json(p) for p in paths],
            "findings": [to_dict(f) for f in findings],
            "notes": notes,
        }
        print(json.dumps(obj, indent=2))
    else:
        console = make_console()
        _banner(console, rec)
        console.print(render_trace.HEADER, style="bold", highlight=False)
        summary = render_trace.Summary()
        t0 = rec.events[0].ts_ns if rec.events else 0
        for ev in rec.events:
            summary.add(ev)
            console.print(render_trace.line(ev, t0, names), soft_wrap=True)
        span = (rec.events[-1].ts_ns - t0) / 1e9 if rec.events else 0.0
        summary.render(console, rec.lost, span)
        console.print()
        _print_paths(console, paths, rec.topology)
        console.print()
        render_findings.render_findings(console, findings, show_info=False)
        for n in notes:
            console.print(Text(f"note: {n}", "dim"))
    bad = [p for p in paths if p.outcome in ("diverted", "dropped")]
    serious = [f for f in findings if f.severity != "info"]
    return int(ExitStatus.FINDINGS if bad or serious else ExitStatus.OK)


def _recorded_names(topo: Topology, later: list[Topology]) -> Any:
    """trace's inode -> name lookup, answered from the recorded topology (the
    namespaces of the machine that recorded, not those of this one); namespaces
    that appeared during the run are named by later snapshots."""
    from vethtrace.render.trace import NetnsNames

    ordered = [ns for t in (topo, *reversed(later)) for ns in t.namespaces]
    return NetnsNames(Topology(namespaces=ordered))


def _path_json(p: PacketPath) -> dict[str, Any]:
    return {
        "kind": p.kind,
        "outcome": p.outcome,
        "drop_reason": p.drop_reason,
        "packet": p.summary.describe() if p.summary else None,
        "hops": [to_dict(h) for h in p.hops],
    }


def _print_paths(console: Console, paths: list[PacketPath], topo: Topology) -> None:
    """One row per packet, as watch shows them (same hop chains and words)."""
    from vethtrace.render.live import NameShortener, hop_chain, outcome_text, short_packet

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


# --- common --------------------------------------------------------------------------


def _banner(console: Console, rec: Recording) -> None:
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


def _recording_json(rec: Recording) -> dict[str, Any]:
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
        "lost": rec.lost if rec.complete else None,
        "notes": rec.notes,
    }
