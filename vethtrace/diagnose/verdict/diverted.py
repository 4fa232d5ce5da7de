"""Diverted: the ARP reply arrived on the interface that asked, but a master took it.

Its own module because it is the seed case and the subtlest verdict: tcpdump
on the port shows the reply, yet the port's stack never gets it. Two readings
of it: `_diverted`, ping's verdict (which knows what it asked for), and
`mark_diversion`, the same judgement on any packet path without a plan
(watch and trace reports). `annotated_paths` marks the hops that show a
ping's diversion for display.
"""

from __future__ import annotations

from typing import Any

from vethtrace.diagnose.verdict.analysis import SETTLE_NS, Analysis, _fixes_from
from vethtrace.diagnose.verdict.plan import PingPlan
from vethtrace.model import Finding, Hop, Interface, PacketPath, Topology, Verdict
from vethtrace.points import ARRIVAL_POINTS

RESOLVED_STATES = {"REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"}


def mark_diversion(path: PacketPath, topo: Topology | None) -> None:
    """Mark a path `diverted` when a bridge port received a packet addressed to
    the port's own address and the bridge's rx_handler handed it up to the
    bridge's stack: the seed bug, where the port (which asked) never hears the
    answer. A packet for the bridge's own address taking the same way is
    normal, and so is a broadcast the bridge also floods."""
    if topo is None or path.summary is None:
        return
    s = path.summary
    dst = s.arp_tpa if s.arp_op is not None else s.ip_dst
    if not dst:
        return
    prev: Hop | None = None
    for hop in path.hops:
        if hop.point not in ARRIVAL_POINTS:
            continue
        if prev is not None and prev.netns == hop.netns:
            ns = topo.netns_by_name(hop.netns)
            port = ns.iface_by_name(prev.interface) if ns else None
            bridge = ns.iface_by_name(hop.interface) if ns else None
            if (
                port is not None
                and bridge is not None
                and port.master == bridge.key.ifindex
                and any(a.address == dst for a in port.addresses)
            ):
                path.outcome = "diverted"
                hop.ok = False
                hop.note = f"taken by {bridge.name}'s rx_handler: {port.name} never gets it"
                return
        prev = hop


def annotated_paths(a: Analysis, topo: Topology, verdict: Verdict | None) -> list[PacketPath]:
    """The analysis' paths with the hops that explain the verdict marked ✗ (for
    display). Marks them in place: call once per analysis."""
    if verdict is None or verdict.kind != "diverted" or verdict.culprit is None:
        return a.paths
    port = topo.iface(verdict.culprit)
    ns = topo.netns(verdict.culprit.netns)
    master = ns.iface(port.master) if ns and port and port.master is not None else None
    if port is None or master is None:
        return a.paths
    where = verdict.culprit_netns
    for p in a.paths:
        if not p.summary or p.summary.arp_op != 2:
            continue
        if not any(h.netns == where and h.interface == port.name for h in p.hops):
            continue
        for h in p.hops:
            if h.netns != where:
                continue
            if h.interface == master.name:
                h.ok = False
                if h.note.startswith(("handed up", "received", "sniffed arriving")):
                    h.note = (
                        f"taken from {port.name} by {master.name}'s rx_handler ({master.kind} port)"
                    )
                else:
                    h.note += f": the reply ends in {master.name}'s stack, not {port.name}'s"
            elif h.interface == port.name and h.note in ("received", "sniffed arriving"):
                h.note = f"received on {port.name}: tcpdump shows it here"
    return a.paths


def _asker(a: Analysis, reply: PacketPath) -> Any:
    """The first hop that sent the ARP request this reply answers: the device whose
    stack asked (a bridge's request also crosses its port; the bridge asked)."""
    r = reply.summary
    for p in a.paths:
        q = p.summary
        if q is None or r is None or q.arp_op != 1:
            continue
        if q.arp_tpa == r.arp_spa and q.arp_spa == r.arp_tpa:
            sent = [h for h in p.hops if h.note.startswith(("sent", "sniffed leaving"))]
            if sent:
                return sent[0]
    return None


def _diverted(
    plan: PingPlan, topo: Topology, a: Analysis, findings: list[Finding], final: bool, now: int
) -> Verdict | None:
    """An ARP reply arrived on the very interface that asked, but that interface is
    enslaved: its master's rx_handler took the reply, so the asker's entry never
    resolves. On the source side (seed) or on the target's (the reply can't go back)."""
    for p in (p for p in a.paths if p.summary and p.summary.arp_op == 2):
        asked = _asker(a, p)
        if asked is None:
            continue
        ns = topo.netns_by_name(asked.netns)
        port = ns.iface_by_name(asked.interface) if ns else None
        if ns is None or port is None or port.master is None:
            continue
        master = ns.iface(port.master)
        at_port = [
            h
            for h in p.hops
            if h.netns == asked.netns
            and h.interface == port.name
            and h.note.startswith(("received", "sniffed arriving"))
        ]
        if master is None or not at_port:
            continue
        seen_at = at_port[0]
        address = p.summary.arp_spa if p.summary else None
        states = [
            t
            for t in a.neigh
            if t["interface"] == port.name and t["netns"] == ns.name and t["address"] == address
        ]
        after = [t for t in states if t["time_ns"] >= seen_at.ts_ns]
        if any(t["state"] in RESOLVED_STATES for t in after):
            continue
        # Live: certain once the reply is SETTLE_NS old and the entry is not resolved;
        # the kernel would update it within microseconds of processing the reply.
        waited = now - seen_at.ts_ns >= SETTLE_NS
        if not final and not (waited and (not states or states[-1]["state"] not in
                                          RESOLVED_STATES)):  # fmt: skip
            return None
        return _explain_diverted(plan, topo, p, ns.name, port, master, seen_at, states, findings)
    return None


def _explain_diverted(
    plan: PingPlan,
    topo: Topology,
    p: PacketPath,
    where: str,
    port: Interface,
    master: Interface,
    seen_at: Any,
    states: list[dict[str, Any]],
    findings: list[Finding],
) -> Verdict:
    mname, mkind = master.name, master.kind
    asked_for = p.summary.arp_spa if p.summary else plan.nexthop
    taken = [h for h in p.hops if h.interface == mname and h.netns == where]
    flag = "" if where == "root" else f"-n {where} "
    addr = next((x for x in port.addresses if x.family == 4), None)
    fix = _fixes_from(findings, where, port.name)
    if not fix and addr is not None:
        fix = [
            f"ip {flag}addr del {addr.cidr} dev {port.name}",
            f"ip {flag}addr add {addr.cidr} dev {mname}",
            f"ip {flag}link set {mname} up",
        ]
    tcpdump = (
        f"tcpdump on {port.name} shows the ARP reply (our sniffer saw it arrive there), "
        if seen_at.sniffed
        else f"The ARP reply did arrive on {port.name}, "
    )
    stuck = states[-1]["state"] if states else "INCOMPLETE"
    side = where == plan.source
    what = (
        "ping fails"
        if side
        else f"the echo replies to {asked_for} wait in its queue and are dropped: ping fails"
    )
    explanation = (
        f"{tcpdump}but {port.name} is a port of {mname} ({mkind}): its rx_handler takes "
        f"every frame arriving on {port.name} and hands it to {mname}'s stack"
        + (
            f" (the kernel saw it received on {mname})"
            if any(h.point != "sniff" for h in taken)
            else f" (the sniffer on {mname} saw it there too)"
            if taken
            else ""
        )
        + f". {where} asked for {asked_for} out of {port.name} because {port.name} holds "
        f"{addr.address if addr else 'an address'} and the route, so the neighbour entry lives "
        f"on {port.name} — and the answer never reaches it: the entry for {asked_for} on "
        f"{port.name} stays {stuck}"
        f"{'' if stuck == 'FAILED' else ' and turns FAILED after ~3 s of probes'}, and {what}. "
        f"An address on a bridge port is unreachable this way; it belongs on {mname}."
    )
    return Verdict(
        kind="diverted",
        summary=(
            f"the ARP reply from {asked_for} reached {where}/{port.name}, but {mname} took it: "
            f"{port.name} is a {mkind} port, so its neighbour entry never resolves"
        ),
        culprit=port.key,
        culprit_netns=where,
        culprit_interface=port.name,
        explanation=explanation,
        fix=fix,
    )
