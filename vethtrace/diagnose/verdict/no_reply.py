"""No reply: nothing came back, and no kernel drop says why.

Grouped because all three questions start from silence and read the topology
for the reason: the request reached the target and was not answered
(_no_reply), it stopped on the way (_stalled: interface down, wrong link,
forwarding off, isolated bridge ports), or nothing conclusive at all (_lost:
where our frames were last seen).
"""

from __future__ import annotations

from typing import Any

from vethtrace.diagnose.verdict.analysis import (
    Analysis,
    _events_of,
    _fixes_from,
    _master,
    _ns_flag,
    _peer_down_culprit,
)
from vethtrace.diagnose.verdict.plan import PingPlan
from vethtrace.model import Finding, IfaceKey, PacketPath, ProbeEvent, Topology, Verdict
from vethtrace.topology.query import route_lookup

NO_REPLY_GRACE_NS = 1_200_000_000  # ARP/ping retransmit after 1 s: wait a little longer


def _no_reply(
    plan: PingPlan, topo: Topology, a: Analysis, findings: list[Finding], final: bool, now: int
) -> Verdict | None:
    for kind in ("echo", "arp-request"):
        for p in (p for p in a.paths if p.kind == kind):
            at_target = [
                h
                for h in p.hops
                if h.netns == plan.target_netns
                and h.note.startswith(("received", "sniffed arriving", "consumed"))
            ]
            if not at_target or _answered(p, a.paths):
                continue
            wanted = _wanted(p, plan)
            # a flood reaches several interfaces: the one holding the address matters
            holder = [h for h in at_target if _holds(topo, h, wanted)]
            arrived = (holder or at_target)[0]
            if not final and now - at_target[0].ts_ns < NO_REPLY_GRACE_NS:
                return None
            at = [e for e in _events_of(p, a) if topo.netns_name(e.netns) == plan.target_netns]
            return _explain_no_reply(plan, topo, p, arrived, findings, at)
    return None


def _wanted(p: PacketPath, plan: PingPlan) -> str:
    """The address a request asks for: the ARP target, or the echo's destination."""
    s = p.summary
    if s is not None and s.arp_op == 1 and s.arp_tpa:
        return s.arp_tpa
    return plan.ip


def _answered(req: PacketPath, paths: list[PacketPath]) -> bool:
    q = req.summary
    if q is None:
        return False
    for p in paths:
        s = p.summary
        if s is None:
            continue
        if q.arp_op == 1 and s.arp_op == 2 and s.arp_spa == q.arp_tpa and s.arp_tpa == q.arp_spa:
            return True
        if (
            q.icmp_type == 8
            and s.icmp_type == 0
            and (s.icmp_id, s.icmp_seq) == (q.icmp_id, q.icmp_seq)
        ):
            return True
    return False


def _holds(topo: Topology, hop: Any, address: str) -> bool:
    ns = topo.netns_by_name(hop.netns)
    it = ns.iface_by_name(hop.interface) if ns else None
    return it is not None and any(x.address == address for x in it.addresses)


def _location(ev: ProbeEvent) -> str:
    return (ev.location or "").split("+")[0]


def _explain_no_reply(
    plan: PingPlan,
    topo: Topology,
    p: PacketPath,
    arrived: Any,
    findings: list[Finding],
    events_at_target: list[ProbeEvent],
) -> Verdict:
    ns = topo.netns_by_name(arrived.netns)
    it = ns.iface_by_name(arrived.interface) if ns else None
    checks: list[str] = []
    reasons: list[str] = []
    fixes: list[str] = []
    if it is not None and ns is not None:
        wanted = _wanted(p, plan)
        has_ip = any(x.address == wanted for x in it.addresses)
        if p.kind == "arp-request":
            ai = max(
                it.sysctls.get("arp_ignore", "0"),
                ns.sysctls.get("net.ipv4.conf.all.arp_ignore", "0"),
            )
            af = "1" in (
                it.sysctls.get("arp_filter", "0"),
                ns.sysctls.get("net.ipv4.conf.all.arp_filter", "0"),
            )
            asker = p.summary.arp_spa if p.summary else None
            route_back = route_lookup(topo, ns, asker) if asker else None
            if (
                af
                and route_back is not None
                and route_back.oif is not None
                and route_back.oif != it.key
            ):
                out = topo.iface(route_back.oif)
                reasons.append(
                    f"arp_filter=1: {it.name} answers only if the route back to {asker} leaves "
                    f"through it, and {ns.name} routes {asker} out of "
                    f"{out.name if out else 'another interface'}"
                )
                fixes.append(f"ip netns exec {ns.name} sysctl -w net.ipv4.conf.all.arp_filter=0")
                fixes.append(
                    f"ip netns exec {ns.name} sysctl -w net.ipv4.conf.{it.name}.arp_filter=0"
                )
            if not has_ip:
                owner = next(
                    (
                        i.name
                        for i in ns.interfaces
                        if any(x.address == wanted for x in i.addresses)
                    ),
                    None,
                )
                reasons.append(
                    f"{wanted} is not on {it.name}"
                    + (f" but on {owner}" if owner else " nor anywhere in " + ns.name)
                )
            else:
                checks.append(f"{wanted} is on {it.name}")
            if ai != "0" and not has_ip:
                reasons.append(f"arp_ignore={ai}: {it.name} answers ARP only for its own addresses")
                fixes.append(f"ip netns exec {ns.name} sysctl -w net.ipv4.conf.all.arp_ignore=0")
                fixes.append(
                    f"ip netns exec {ns.name} sysctl -w net.ipv4.conf.{it.name}.arp_ignore=0"
                )
            if not it.is_up:
                reasons.append(f"{it.name} is down")
        else:
            lo = ns.iface_by_name("lo")
            if lo is not None and not lo.admin_up:
                checks.append("lo is down (harmless for replies to other hosts)")
            ign = ns.sysctls.get("net.ipv4.icmp_echo_ignore_all")
            if ign and ign != "0":
                reasons.append("net.ipv4.icmp_echo_ignore_all=1")
            back = plan.src_addr
            if back:
                hit = route_lookup(topo, ns, back)
                if hit is None:
                    reasons.append(
                        f"{ns.name} has no route back to {back} (its kernel accepted the echo "
                        "but cannot send the reply anywhere: 'Network is unreachable')"
                    )
                elif hit.kind != "unicast" and not hit.local:
                    reasons.append(f"the route back to {back} in {ns.name} is {hit.kind}")
                else:
                    via = topo.iface(hit.oif) if hit.oif else None
                    checks.append(
                        f"{ns.name} routes replies to {back}"
                        + (f" via {via.name}" if via else "")
                        + (f" through {hit.gateway}" if hit.gateway else "")
                    )
            if any(_location(e) == "icmp_rcv" for e in events_at_target):
                checks.append(f"{ns.name}'s kernel accepted the echo request (icmp_rcv)")
    checks.append("no kernel drop of the request or of an answer was recorded")
    static = _fixes_from(findings, arrived.netns, None)
    static += [f for f in fixes if f not in static]
    what = "ARP request" if p.kind == "arp-request" else "echo request"
    return Verdict(
        kind="no-reply",
        summary=f"the {what} reached {arrived.netns}/{arrived.interface}, and nothing came back",
        culprit=it.key if it else None,
        culprit_netns=arrived.netns,
        culprit_interface=arrived.interface,
        explanation=(
            f"The {what} arrived on {arrived.netns}/{arrived.interface}; no answer left it. "
            + ("Likely: " + "; ".join(reasons) + ". " if reasons else "")
            + "Ruled out: "
            + "; ".join(checks)
            + "."
        ),
        fix=static,
    )


def _stalled(
    plan: PingPlan, topo: Topology, a: Analysis, findings: list[Finding], final: bool, now: int
) -> Verdict | None:
    """The request never reached the target and the kernel reported no drop: find
    in the topology why the frame could not go on from the last place it was seen."""
    hops = _furthest(a)
    if not hops:
        # nothing of ours was seen anywhere: the egress itself may be unable to send
        sent = a.sent[0].ts_ns if a.sent else plan.started_ns
        if not final and now - sent < NO_REPLY_GRACE_NS:
            return None
        return _no_carrier(plan, topo, findings)
    last = hops[-1]
    if not final and now - last.ts_ns < NO_REPLY_GRACE_NS:
        return None
    found = _why_stalled(plan, topo, last, hops)
    if found is None:
        return None
    culprit, summary, explanation, fix = found
    c = topo.iface(culprit)
    return Verdict(
        kind="no-reply",
        summary=summary,
        culprit=culprit,
        culprit_netns=topo.netns_name(culprit.netns),
        culprit_interface=c.name if c else None,
        explanation=explanation
        + f" Our frames were last seen at {last.netns}/{last.interface} ({last.note}).",
        fix=_fixes_from(findings, topo.netns_name(culprit.netns), None) or fix,
    )


def _forward_hops(a: Analysis) -> list[Any]:
    """Hops of our requests (ARP request, echo) that crossed an interface, in time order."""
    return sorted(
        (
            h
            for p in a.paths
            if p.kind in ("arp-request", "echo")
            for h in p.hops
            if h.interface != "lo" and not h.note.startswith("waits")
        ),
        key=lambda h: h.ts_ns,
    )


def _furthest(a: Analysis) -> list[Any]:
    """Hops of the request that got furthest (most interfaces crossed), in time order:
    retransmissions repeat the same walk, and the latest one may still be in flight."""
    best: list[Any] = []
    for p in a.paths:
        if p.kind not in ("arp-request", "echo"):
            continue
        hops = [h for h in p.hops if h.interface != "lo" and not h.note.startswith("waits")]
        if len({(h.netns, h.interface) for h in hops}) > len(
            {(h.netns, h.interface) for h in best}
        ):
            best = hops
    return sorted(best, key=lambda h: h.ts_ns)


def _no_carrier(plan: PingPlan, topo: Topology, findings: list[Finding]) -> Verdict | None:
    """Without kernel probes a frame queued to a carrier-less device is simply never
    seen; the topology still says why (the kernel drops it at the queue)."""
    egress = topo.iface(plan.egress)
    if egress is None or plan.egress is None or egress.carrier:
        return None
    found = _peer_down_culprit(topo, plan.egress)
    culprit, words = found if found else (plan.egress, f"{egress.name} has no carrier")
    c = topo.iface(culprit)
    ns = topo.netns_name(culprit.netns)
    return Verdict(
        kind="dropped",
        summary=f"nothing left {plan.source}/{egress.name}: {words}",
        culprit=culprit,
        culprit_netns=ns,
        culprit_interface=c.name if c else None,
        explanation=(
            f"{egress.name} has no carrier, so the kernel drops whatever is queued to it "
            "(QDISC_DROP) before any sniffer could see it."
        ),
        fix=_fixes_from(findings, ns, None)
        or ([f"ip {_ns_flag(topo, culprit.netns)}link set {c.name} up"] if c else []),
    )


def _why_stalled(
    plan: PingPlan, topo: Topology, last: Any, hops: list[Any]
) -> tuple[IfaceKey, str, str, list[str]] | None:
    tgt = topo.iface(plan.target_iface)
    # 1. the target's own interface is down
    if tgt is not None and plan.target_iface is not None and not tgt.admin_up:
        label = topo.label(tgt.key)
        peer = topo.iface(tgt.peer) if tgt.peer else None
        also = (
            f" (and its peer {topo.label(peer.key)} is down too)"
            if peer is not None and not peer.admin_up
            else ""
        )
        fix = [f"ip {_ns_flag(topo, tgt.key.netns)}link set {tgt.name} up"]
        if peer is not None and not peer.admin_up:
            fix.append(f"ip {_ns_flag(topo, peer.key.netns)}link set {peer.name} up")
        return (
            tgt.key,
            f"{label}, which holds {plan.ip}, is down{also}: nothing crosses its link",
            f"A down interface neither sends nor receives, so {plan.ip} cannot answer.",
            fix,
        )
    # 2. the target lives behind another interface of the source than the route picked
    if plan.target_iface is not None and plan.egress is not None:
        from vethtrace.topology.query import l2_domain

        domain = set(l2_domain(topo, plan.target_iface).members)
        if plan.egress not in domain:
            side = [k for k in domain if k.netns == plan.source_inode]
            if side:
                other = topo.iface(side[0])
                name = other.name if other else "?"
                return (
                    side[0],
                    f"{plan.ip} lives behind {plan.source}/{name}, but the kernel sends to it "
                    f"out of {plan.egress_name}: the ARP request goes to the wrong link",
                    f"{plan.source} routes {plan.ip} through {plan.egress_name} (the same subnet "
                    f"is configured on more than one interface and the kernel uses one route for "
                    f"the whole subnet), so nobody on that link answers for {plan.ip}.",
                    [],
                )
    ns = topo.netns_by_name(last.netns)
    it = ns.iface_by_name(last.interface) if ns else None
    if ns is None or it is None:
        return None
    # 3. a namespace on the way would have to route, with forwarding off
    if (
        last.packet.startswith("ICMP")  # only IP is routed; ARP ends at each link
        and last.note.startswith(("received", "handed up", "consumed"))
        and ns.inode not in (plan.target_inode, plan.source_inode)
        and ns.sysctls.get("net.ipv4.ip_forward") == "0"
        and not any(x.address == plan.ip for i in ns.interfaces for x in i.addresses)
    ):
        return (
            it.key,
            f"{ns.name} would have to route it (it arrived on {it.name}), but "
            "net.ipv4.ip_forward=0 there",
            f"{ns.name} is on the way to {plan.ip} but does not forward: it drops every packet "
            "it would have to route, silently.",
            [f"ip netns exec {ns.name} sysctl -w net.ipv4.ip_forward=1"],
        )
    # 4. it entered a bridge on a port and the bridge did not pass it on
    for h in reversed(hops):
        if not h.note.startswith(("received", "sniffed arriving")):
            continue
        hns = topo.netns_by_name(h.netns)
        port = hns.iface_by_name(h.interface) if hns else None
        bridge = _master(topo, port.key) if port else None
        if hns is None or port is None or bridge is None or bridge.kind != "bridge":
            continue
        others = [p for p in hns.interfaces if p.master == bridge.key.ifindex and p != port]
        iso = [p for p in others if p.bridge_port and p.bridge_port.isolated]
        if port.bridge_port is not None and port.bridge_port.isolated and iso:
            names = ", ".join(p.name for p in iso)
            return (
                port.key,
                f"{port.name} and {names} are isolated ports of {bridge.name}: the bridge "
                "never forwards between two isolated ports",
                f"The frame entered {bridge.name} on {port.name} and was not flooded to {names}.",
                [f"bridge -n {hns.name} link set dev {port.name} isolated off"],
            )
        break
    return None


def _lost(plan: PingPlan, topo: Topology, a: Analysis, findings: list[Finding]) -> Verdict:
    """Nothing conclusive: say where our frames were last seen."""
    hops = _forward_hops(a)
    if hops:
        last = hops[-1]
        ns = topo.netns_by_name(last.netns)
        it = ns.iface_by_name(last.interface) if ns else None
        return Verdict(
            kind="no-reply",
            summary=f"no answer; our frames were last seen at {last.netns}/{last.interface}",
            culprit=it.key if it else None,
            culprit_netns=last.netns,
            culprit_interface=last.interface,
            explanation="No drop with a reason and no answer was recorded; the last hop seen "
            f"was {last.note} at {last.netns}/{last.interface}.",
            fix=_fixes_from(findings, last.netns, None),
        )
    return Verdict(
        kind="no-reply",
        summary=f"nothing answered {plan.ip} and no frame of ours was seen on the path",
        culprit=plan.egress,
        culprit_netns=plan.source,
        culprit_interface=plan.egress_name,
        explanation="Neither the probes nor the sniffers saw our frames leave the source.",
        fix=_fixes_from(findings, plan.source, None),
    )
