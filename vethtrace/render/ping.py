"""How `vethtrace ping` shows its result: the path table, the verdict, the why, the fix.

Both the terminal view and the --json object are built from data only
(plan, events, topology, verdict, findings), so `report` prints exactly the
same thing from a recording. Times are milliseconds since the first echo
request left (kernel monotonic clock), so hops line up with `ping`'s own RTTs.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.text import Text

from vethtrace.diagnose.verdict import Analysis, PingPlan, analyse, annotated_paths
from vethtrace.model import (
    Finding,
    Hop,
    NftraceEvent,
    PacketPath,
    ProbeEvent,
    Topology,
    Verdict,
    to_dict,
)
from vethtrace.render import nftrace as nftrender


@dataclass
class PingReport:
    """Everything a ping's output shows: built live by `ping` and from a
    recording by `report`, so both print the same thing. `analysis` is the
    one judge() drew the verdict from; without it (a report put together by
    hand) the events are analysed here, once."""

    plan: PingPlan
    verdict: Verdict | None
    events: Sequence[ProbeEvent]
    topo: Topology
    findings: list[Finding]
    warnings: Sequence[str] = ()
    notes: Sequence[str] = ()
    timings: dict[str, float] | None = None
    analysis: Analysis | None = None
    predicted: dict[str, Any] | None = None  # the path model's prediction (PathPrediction.to_dict)
    nftrace: Sequence[NftraceEvent] = ()  # --nftrace's rule verdicts (render/nftrace.py)
    rule: dict[str, Any] | None = None  # the rule culprit (diagnose/nftrace.py)
    paths: list[PacketPath] = field(init=False)  # our packets, hops marked for the verdict

    def __post_init__(self) -> None:
        a = self.analysis or analyse(self.plan, list(self.events), self.topo)
        self.paths = annotated_paths(a, self.topo, self.verdict)


VERDICT_STYLE = {
    "delivered": "bold green",
    "diverted": "bold red",
    "dropped": "bold red",
    "no-reply": "bold yellow",
    "unreachable": "bold red",
}


def _t0(plan: PingPlan, events: Sequence[ProbeEvent]) -> int:
    sends = [e.ts_ns for e in events if e.point == "ping-send"]
    return min(sends) if sends else plan.started_ns


def socket_hops(plan: PingPlan, events: Sequence[ProbeEvent]) -> list[Hop]:
    """ping's own view (what the socket sent and got back) as rows of the table."""
    out = []
    for e in events:
        if e.point == "ping-send":
            text, ok = f"echo request seq {e.extra.get('seq')} sent to {plan.ip}", True
        elif e.point == "ping-reply":
            text, ok = f"echo reply seq {e.extra.get('seq')} received", True
        elif e.point == "ping-error":
            if e.extra.get("icmp_type") == 3:
                code, sender = e.extra.get("icmp_code"), e.extra.get("sender")
                text = f"ICMP unreachable (code {code}) from {sender}"
            else:
                text = f"send failed: {e.extra.get('error')}"
            ok = False
        else:
            continue
        out.append(
            Hop(
                netns=plan.source,
                interface="(socket)",
                point=e.point,
                packet="",
                ts_ns=e.ts_ns,
                ok=ok,
                note=text,
            )
        )
    return out


def hop_rows(report: PingReport) -> list[Hop]:
    hops = [h for p in report.paths for h in p.hops] + socket_hops(report.plan, report.events)
    return sorted(hops, key=lambda h: h.ts_ns)


def packet_groups(report: PingReport) -> list[tuple[str, list[Hop]]]:
    """(packet description, its hops) in order of first appearance; ping's socket
    view first. Grouping by packet reads better than one interleaved time line."""
    groups: list[tuple[str, list[Hop]]] = []
    sock = socket_hops(report.plan, report.events)
    if sock:
        groups.append((f"ping's socket in {report.plan.source}", sock))
    paths = report.paths
    for p in sorted(paths, key=lambda p: min((h.ts_ns for h in p.hops), default=p.first_ns)):
        if p.hops:
            groups.append((p.summary.describe() if p.summary else p.kind, p.hops))
    return groups


def to_json(report: PingReport) -> dict[str, Any]:
    """The --json object (fields listed in README's ping section): reachable, verdict,
    summary, culprit, path, findings, ..."""
    plan, verdict, events, findings = report.plan, report.verdict, report.events, report.findings
    warnings, notes, timings = report.warnings, report.notes, report.timings
    t0 = _t0(plan, events)
    culprit = None
    if verdict is not None and verdict.culprit_netns:
        culprit = {"netns": verdict.culprit_netns, "interface": verdict.culprit_interface}
    path = [
        {
            "netns": h.netns,
            "interface": h.interface,
            "point": h.point,
            "packet": h.packet,
            "time": round((h.ts_ns - t0) / 1e9, 6),
            "ok": h.ok,
            "note": h.note,
            "sniffed": h.sniffed,
        }
        for h in hop_rows(report)
    ]
    return {
        "reachable": bool(verdict and verdict.reachable),
        "verdict": verdict.kind if verdict else None,
        "summary": verdict.summary if verdict else "",
        "culprit": culprit,
        "explanation": verdict.explanation if verdict else "",
        "fix": list(verdict.fix) if verdict else [],
        "source": plan.source,
        "target": {"netns": plan.target_netns, "ip": plan.ip, "owners": plan.owners},
        "route": {
            "egress": plan.egress_name,
            "gateway": plan.gateway,
            "src": plan.src_addr,
            "error": plan.route_error,
        },
        "path": path,
        "neighbour_timeline": [
            {**t, "time": round((t["time_ns"] - t0) / 1e9, 6)}
            for t in (verdict.timeline if verdict else [])
        ],
        "findings": [to_dict(f) for f in findings],
        **_nftrace_json(report),
        "warnings": list(warnings),
        "notes": list(notes),
        "timings": {k: round(v, 3) for k, v in (timings or {}).items()},
        # the path model's prediction from the same topology (live and re-judged alike)
        **({"predicted": report.predicted} if report.predicted is not None else {}),
    }


def _nftrace_json(report: PingReport) -> dict[str, Any]:
    """`rule` and `nftrace`, only in runs made with --nftrace (so the JSON of
    other runs, and of recordings made before it, stays as it was)."""
    if not report.nftrace and report.rule is None:
        return {}
    names = report.topo.netns_name
    return {
        "rule": report.rule,
        "nftrace": [nftrender.json_obj(e, names(e.netns)) for e in report.nftrace],
    }


def _where(h: Hop) -> str:
    return h.netns if h.interface == "(socket)" else f"{h.netns}/{h.interface}"


def _print_groups(console: Console, groups: list[tuple[str, list[Hop]]], t0: int) -> None:
    """Packet title, then one aligned line per hop: time, ✓/✗, netns/interface, what
    happened (wrapped under itself, so the table stays readable at 100 columns)."""
    wide = min(30, max(len(_where(h)) for _t, hops in groups for h in hops))
    indent = 11 + 2 + 2 + wide + 2
    room = max(30, console.width - indent)
    for title, hops in groups:
        console.print(Text(f"  {title}", "bold"), soft_wrap=False, overflow="ellipsis")
        for h in hops:
            mark = Text("✓", "green") if h.ok else Text("✗", "bold red")
            note = h.note + (" (sniffed)" if h.sniffed and "tcpdump" not in h.note else "")
            lines = textwrap.wrap(note, room) or [""]
            head = Text(f"{_ms(h.ts_ns, t0) + ' ms':>11}  ")
            head.append_text(mark)
            head.append(f" {_where(h)[:wide]:<{wide}}  {lines[0]}")
            console.print(head, soft_wrap=True)
            for more in lines[1:]:
                console.print(" " * indent + more, soft_wrap=True, markup=False)


def _ms(ns: int, t0: int) -> str:
    return f"{(ns - t0) / 1e6:+.2f}"


def show(console: Console, report: PingReport, notes_to: Console | None = None) -> None:
    """The report on `console`; warnings and notes (about the run, not the
    network) on `notes_to`, stderr for the commands, so stdout is the report."""
    plan, verdict, events, findings = report.plan, report.verdict, report.events, report.findings
    warnings, notes, timings = report.warnings, report.notes, report.timings
    t0 = _t0(plan, events)
    route = (
        f"via {plan.egress_name}" + (f", gateway {plan.gateway}" if plan.gateway else "")
        if plan.egress_name
        else f"no route ({plan.route_error})"
    )
    console.print(
        Text.assemble(
            ("ping ", "bold"),
            (f"{plan.ip}", "bold"),
            f" in {plan.target_netns} from {plan.source} ({route})",
        ),
        soft_wrap=False,
    )
    groups = packet_groups(report)
    if groups:
        _print_groups(console, groups, t0)
    else:
        console.print("  (no frame of ours was seen)")
    rows = nftrender.path_lines(report.nftrace, plan.ip, report.topo.netns_name)
    if rows:
        console.print(Text("  netfilter verdicts (the kernel's nftables trace)", "bold"))
        for ok, row in rows:
            mark = Text("  ✓ ", "green") if ok else Text("  ✗ ", "bold red")
            console.print(mark.append(row, "" if ok else "red"), soft_wrap=True)
    if verdict is not None and verdict.timeline:
        states = " → ".join(
            f"{t['state']} ({_ms(t['time_ns'], t0)} ms)"
            if t["time_ns"] >= t0
            else f"{t['state']} (already, from an earlier attempt)"
            for t in verdict.timeline
        )
        devs = sorted({f"{t['netns']}/{t['interface']}" for t in verdict.timeline})
        addrs = sorted({str(t["address"]) for t in verdict.timeline})
        console.print(
            f"neighbour {', '.join(addrs)} on {', '.join(devs)}: {states}", soft_wrap=False
        )
    console.print()
    if verdict is None:
        return
    console.print(
        Text.assemble(
            (f"{verdict.kind.upper()}", VERDICT_STYLE.get(verdict.kind, "bold")),
            f": {verdict.summary}",
        ),
        soft_wrap=False,
    )
    if verdict.culprit_netns:
        iface = f"/{verdict.culprit_interface}" if verdict.culprit_interface else ""
        console.print(Text.assemble(("culprit: ", "bold"), f"{verdict.culprit_netns}{iface}"))
    if report.rule is not None:
        for i, row in enumerate(nftrender.culprit_lines(report.rule)):
            console.print(Text(row, "bold" if i == 0 else ""), soft_wrap=True, markup=False)
    if verdict.explanation:
        console.print()
        console.print(verdict.explanation, soft_wrap=False)
    if verdict.fix:
        console.print()
        console.print(Text("fix:", "bold"))
        for cmd in verdict.fix:
            console.print(f"  {cmd}", highlight=False, markup=False)
    relevant = [f for f in findings if f.severity != "info"]
    if relevant:
        console.print()
        console.print(Text("static checks on this path:", "bold"))
        for f in relevant:
            where = f"{f.netns}/{f.interface}" if f.interface else f.netns
            console.print(
                f"  [{f.severity}] {where}: {f.summary} ({f.rule})", markup=False, soft_wrap=False
            )
    for n in [*warnings, *notes]:
        (notes_to or console).print(Text(f"note: {n}", "dim"), soft_wrap=False)
    if timings and "verdict" in timings:
        console.print(Text(f"verdict after {timings['verdict']:.2f} s", "dim"))
