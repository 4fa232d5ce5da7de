"""What every verdict family reads: our packets and the neighbour timeline.

Kept apart from the verdicts so each family module (diverted, dropped,
no_reply) sees the same evidence, and render can show the same table and
timeline the verdict was based on. Pure data in, data out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vethtrace.correlate import Packet, correlate_packets
from vethtrace.diagnose.verdict.plan import PingPlan
from vethtrace.model import Finding, IfaceKey, Interface, PacketPath, ProbeEvent, Topology
from vethtrace.topology.query import route_lookup

SETTLE_NS = 30_000_000  # live: evidence this old (and not undone) makes a verdict certain


def _label(topo: Topology, key: IfaceKey | None) -> str:
    return topo.label(key) if key else "?"


def _ns_flag(topo: Topology, ns_inode: int) -> str:
    name = topo.netns_name(ns_inode)
    return "" if name == "root" else f"-n {name} "


def ours(path: PacketPath, plan: PingPlan, hops: frozenset[str] = frozenset()) -> bool:
    """Does this packet belong to our ping (its ARP or its ICMP)? `hops`: the next
    hops the routers on the way resolve for it (router_hops)."""
    s = path.summary
    if s is None:
        return False
    addrs = {plan.ip, plan.nexthop} | ({plan.src_addr} if plan.src_addr else set())
    if s.arp_op is not None:
        # our own resolution, a router's asking for the target or for its own next
        # hop toward it (or back), the target asking where to send its reply, and
        # their answers
        return bool({s.arp_spa, s.arp_tpa} & ({plan.ip, plan.nexthop} | hops))
    if s.icmp_type is not None:
        return s.ip_src in addrs and s.ip_dst in addrs
    return False


def router_hops(plan: PingPlan, topo: Topology) -> frozenset[str]:
    """The gateways every forwarding namespace routes the target (and the reply's
    destination) through: a router resolves its own next hop before it forwards
    our packet, and when that ARP goes unanswered or is dropped (a VXLAN device
    with no neighbour entry for the remote VTEP, which cannot carry ARP) it is
    the evidence of why our packet went no further."""
    out: set[str] = set()
    for ns in topo.namespaces:
        if ns.sysctls.get("net.ipv4.ip_forward") != "1":
            continue
        for dst in (plan.ip, plan.src_addr):
            hit = route_lookup(topo, ns, dst) if dst else None
            if hit is not None and hit.gateway:
                out.add(hit.gateway)
    return frozenset(out - {plan.ip, plan.nexthop})


@dataclass
class Analysis:
    """Everything judge() worked out; render shows its paths and timeline."""

    paths: list[PacketPath]
    packets: list[Packet]  # aligned with paths: the raw events of each
    timeline: list[dict[str, Any]]  # the next hop's entries (shown to the user)
    replies: list[ProbeEvent]
    sent: list[ProbeEvent]
    errors: list[ProbeEvent]
    last_ns: int
    neigh: list[dict[str, Any]] = field(default_factory=list)  # every address's entries


def analyse(plan: PingPlan, events: list[ProbeEvent], topo: Topology) -> Analysis:
    # Packets that began before our first send are someone else's (typically the
    # kernel still retrying ARP for an earlier run): not evidence about this one.
    since = plan.started_ns - 1_000_000 if plan.started_ns else 0
    hops = router_hops(plan, topo)
    pairs = [
        (k, p)
        for k, p in correlate_packets(events, topo)
        if ours(p, plan, hops) and k.first_ns >= since
    ]
    paths = [p for _k, p in pairs]
    timeline = neighbour_timeline(plan, events, topo)
    sent = [e for e in events if e.point == "ping-send"]
    replies = [e for e in events if e.point == "ping-reply"]
    errors = [e for e in events if e.point == "ping-error"]
    last = max((e.ts_ns for e in events), default=plan.started_ns)
    neigh = neighbour_timeline(plan, events, topo, address=None)
    return Analysis(paths, [k for k, _p in pairs], timeline, replies, sent, errors, last, neigh)


def neighbour_timeline(
    plan: PingPlan, events: list[ProbeEvent], topo: Topology, address: str | None = ""
) -> list[dict[str, Any]]:
    """State changes of the next hop's neighbour entries, from kernel neigh_* events
    and ping's netlink polling; repeats of the same state on the same device are folded."""
    out: list[dict[str, Any]] = []
    last: dict[tuple[int, int, str], str] = {}
    want = plan.nexthop if address == "" else address  # None: every address
    for ev in sorted(events, key=lambda e: e.ts_ns):
        n = ev.neigh
        if n is None or (want is not None and n.address != want):
            continue
        state = n.new_state or n.old_state
        if not state or (state == "NONE" and ev.source != "netlink"):
            continue  # neigh_create's NONE: the INCOMPLETE that follows says more
        where = (ev.netns, ev.ifindex, n.address)
        if last.get(where) == state:
            continue
        last[where] = state
        out.append(
            {
                "time_ns": ev.ts_ns,
                "netns": topo.netns_name(ev.netns),
                "interface": ev.ifname or f"if{ev.ifindex}",
                "address": n.address,
                "state": state,
                "lladdr": n.lladdr,
                "source": ev.source,
            }
        )
    return out


def _fixes_from(findings: list[Finding], netns: str | None, iface: str | None) -> list[str]:
    out: list[str] = []
    for f in findings:
        if (
            f.severity in ("error", "warning")
            and f.netns == netns
            and (iface is None or f.interface in (iface, None))
        ):
            out.extend(c for c in f.fix if c not in out)
    return out


def _events_of(p: PacketPath, a: Analysis) -> list[ProbeEvent]:
    for k, path in zip(a.packets, a.paths, strict=True):
        if path is p:
            return k.events
    return []


def _master(topo: Topology, key: IfaceKey) -> Interface | None:
    it = topo.iface(key)
    if it is None or it.master is None:
        return None
    return topo.iface(IfaceKey(key.netns, it.master))


def _peer_down_culprit(topo: Topology, dev: IfaceKey) -> tuple[IfaceKey, str] | None:
    """For a QDISC_DROP at dev: the carrier-less veth behind it and which end is down."""
    it = topo.iface(dev)
    if it is None:
        return None
    candidates = [it]
    if it.kind == "bridge":
        ns = topo.netns(dev.netns)
        candidates = [p for p in (ns.interfaces if ns else []) if p.master == it.key.ifindex]
    for c in candidates:
        if c.kind == "veth" and not c.carrier and c.peer is not None:
            peer = topo.iface(c.peer)
            if peer is not None and not peer.admin_up:
                return c.peer, f"{topo.label(c.peer)} (the peer of {topo.label(c.key)}) is down"
        if c.kind == "veth" and not c.carrier and not c.admin_up:
            return c.key, f"{topo.label(c.key)} is down"
    return None
