"""judge()/decide(): ask the verdict families in order; the first certain answer wins.

The order is the point (see the package docstring): unreachable and delivered
are answered here; the others live in their own modules.
"""

from __future__ import annotations

from dataclasses import dataclass

from vethtrace.diagnose.verdict.analysis import Analysis, _fixes_from, analyse
from vethtrace.diagnose.verdict.diverted import _diverted
from vethtrace.diagnose.verdict.dropped import _dropped
from vethtrace.diagnose.verdict.no_reply import _lost, _no_reply, _stalled
from vethtrace.diagnose.verdict.plan import PingPlan
from vethtrace.model import Finding, ProbeEvent, Topology, Verdict


@dataclass
class Decision:
    """A verdict (None: not certain yet) and the analysis it was drawn from,
    which render shows (the packet table, the timeline) without correlating
    the events a second time."""

    verdict: Verdict | None
    analysis: Analysis


def judge(
    plan: PingPlan,
    events: list[ProbeEvent],
    topo: Topology,
    findings: list[Finding] | None = None,
    final: bool = True,
    now_ns: int | None = None,
) -> Decision:
    """The verdict with its analysis; verdict None when final is False and the
    evidence is not yet certain."""
    a = analyse(plan, events, topo)
    return Decision(_verdict(plan, topo, a, findings or [], final, now_ns), a)


def decide(
    plan: PingPlan,
    events: list[ProbeEvent],
    topo: Topology,
    findings: list[Finding] | None = None,
    final: bool = True,
    now_ns: int | None = None,
) -> Verdict | None:
    """The verdict alone (judge() without the analysis), or None when final is
    False and the evidence is not yet certain."""
    return judge(plan, events, topo, findings, final, now_ns).verdict


def _verdict(
    plan: PingPlan,
    topo: Topology,
    a: Analysis,
    findings: list[Finding],
    final: bool,
    now_ns: int | None,
) -> Verdict | None:
    if plan.route_error:
        return _unreachable(plan, topo, findings)
    now = now_ns if now_ns is not None else a.last_ns
    if a.replies:
        return _delivered(plan, topo, a)
    for fn in (_diverted, _dropped, _no_reply, _stalled):
        v = fn(plan, topo, a, findings, final, now)
        if v is not None:
            _attach(v, a)
            return v
    if not final:
        return None
    v = _lost(plan, topo, a, findings)
    _attach(v, a)
    return v


def _attach(v: Verdict, a: Analysis) -> None:
    """The neighbour timeline that matters: the stuck entry for a diversion (it may be
    the target's, for the reply), the next hop's otherwise."""
    v.timeline = a.timeline
    if v.kind == "diverted":
        stuck = [
            t
            for t in a.neigh
            if t["netns"] == v.culprit_netns and t["interface"] == v.culprit_interface
        ]
        v.timeline = stuck or a.timeline


def _unreachable(plan: PingPlan, topo: Topology, findings: list[Finding]) -> Verdict:
    ns = plan.source
    flag = "" if ns == "root" else f"-n {ns} "
    return Verdict(
        kind="unreachable",
        summary=f"{ns} has no route to {plan.ip}: {plan.route_error}",
        culprit=None,
        culprit_netns=ns,
        culprit_interface=None,
        explanation=(
            f"The kernel's route lookup in {ns} for {plan.ip} failed ({plan.route_error}), "
            "so no ARP request and no echo request was ever sent."
        ),
        fix=_fixes_from(findings, ns, None)
        or [f"ip {flag}route add {plan.ip}/32 dev <interface toward {plan.target_netns}>"],
    )


def _delivered(plan: PingPlan, topo: Topology, a: Analysis) -> Verdict:
    r = a.replies[0]
    first = a.sent[0].ts_ns if a.sent else plan.started_ns
    rtt = (r.ts_ns - first) / 1e6 if first else 0.0
    via = f" via {plan.egress_name}" if plan.egress_name else ""
    return Verdict(
        kind="delivered",
        summary=(
            f"{plan.ip} in {plan.target_netns} answered {plan.source}'s echo request{via} "
            f"({rtt:.2f} ms after the first send, ARP included)"
        ),
        explanation=f"{len(a.replies)} echo repl{'y' if len(a.replies) == 1 else 'ies'} "
        f"received for {len(a.sent)} sent.",
        timeline=a.timeline,
    )
