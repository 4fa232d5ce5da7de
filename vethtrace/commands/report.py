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

from vethtrace.console import make_console
from vethtrace.errors import ExitStatus, UserError
from vethtrace.model import Finding, Topology, from_dict
from vethtrace.record import Recording, read
from vethtrace.render.trace import NetnsNames, notice_text


def run(
    file: str,
    as_json: bool = False,
    since: str | None = None,
    until: str | None = None,
    at: str | None = None,
    netns: list[str] | None = None,
) -> int:
    if os.path.isdir(file):  # a flight recorder's directory (commands/report_dir.py)
        from vethtrace.commands import report_dir

        return report_dir.run(file, as_json, since, until, at, netns or [])
    if since or until or at or netns:
        raise UserError("--since, --until, --at and -n apply to a recorder's directory")
    rec = read(file)
    notes = list(rec.notes) + [notice_text(n) for n in rec.notices]
    if rec.interrupted:
        notes.append(
            f"the run was interrupted ({rec.interrupted}): what it would have seen "
            "after that is missing"
        )
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
    from vethtrace.diagnose.nftrace import name_rule
    from vethtrace.diagnose.verdict import PingPlan, judge
    from vethtrace.diagnose.verdict.model import compare
    from vethtrace.render import ping as render
    from vethtrace.render import report as render_report

    assert rec.topology is not None
    meta: dict[str, Any] = rec.header["ping"]
    try:
        plan = from_dict(PingPlan, meta["plan"], strict=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{rec.path}: the ping header has no usable plan ({exc})") from None
    findings, check_note = _findings(rec, _ping_scope(meta, plan, rec.topology))
    if check_note:
        notes.append(check_note)
    decision = judge(plan, rec.events, rec.topology, findings, final=True)
    checked = compare(decision.verdict, plan, rec.topology)
    verdict = checked.verdict
    # the rule culprit, as the live run named it: from the recorded trace
    # verdicts (--nftrace), else predicted from the recorded ruleset
    traced = bool(meta.get("nftrace")) or bool(rec.nftrace)
    drop = any(e.drop_reason == "NETFILTER_DROP" for e in rec.events)
    rule, rule_notes = name_rule(
        verdict, plan.ip, rec.nftrace, traced, drop, checked.predicted, rec.topology
    )
    notes.extend(
        n for n in [*checked.notes, *rule_notes] if n not in (meta.get("notes") or [])
    )
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
        decision.analysis, checked.predicted, nftrace=rec.nftrace, rule=rule,
    )  # fmt: skip
    if as_json:
        obj = render.to_json(report)
        obj["recording"] = render_report.recording_json(rec)
        print(json.dumps(obj, indent=2))
    else:
        console = make_console()
        render_report.banner(console, rec)
        render.show(console, report, notes_to=make_console(stderr=True))
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
    from vethtrace.render import report as render_report

    assert rec.topology is not None
    paths = correlate(rec.events, rec.topology)
    for p in paths:
        mark_diversion(p, rec.topology)
    if not rec.complete:
        notes.append("events after the cut are missing")
    names = _recorded_names(rec.topology, rec.topology_changes)
    if as_json:
        obj = render_report.trace_json(rec, names, paths, findings, notes)
        print(json.dumps(obj, indent=2))
    else:
        render_report.show_trace(
            make_console(), rec, names, paths, findings, notes, make_console(stderr=True)
        )
    bad = [p for p in paths if p.outcome in ("diverted", "dropped")]
    serious = [f for f in findings if f.severity != "info"]
    return int(ExitStatus.FINDINGS if bad or serious else ExitStatus.OK)


def _recorded_names(topo: Topology, later: list[Topology]) -> NetnsNames:
    """trace's inode -> name lookup, answered from the recorded topology (the
    namespaces of the machine that recorded, not those of this one); namespaces
    that appeared during the run are named by later snapshots."""
    ordered = [ns for t in (topo, *reversed(later)) for ns in t.namespaces]
    return NetnsNames(Topology(namespaces=ordered))
