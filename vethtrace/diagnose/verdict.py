"""One verdict for a ping: delivered, diverted, dropped, no-reply or unreachable.

Input is only data — the plan (what ping expected: source, route, egress,
next hop, target), the topology snapshot, and the events (kernel probes,
sniffed frames, and ping's own observations: `ping-send`, `ping-reply`,
`ping-error`, `neigh-state` from netlink). Nothing here touches the live
system, so `report` reaches the same verdict from a recording, and ping can
call `decide(..., final=False)` while traffic flows to stop as soon as the
answer is certain.

Order of the questions, and why:
1. unreachable — no route at the source: nothing was sent, nothing else matters.
2. delivered   — an echo reply came back to the sender's socket: the only proof.
3. diverted    — an ARP reply for the next hop arrived on the egress interface,
   but that interface is enslaved (bridge/bond port): its rx_handler hands
   every frame to the master's stack, so the entry that asked never resolves.
   Checked before drops because the consequence (NEIGH_FAILED drops, ICMP
   host-unreachable) looks like a drop but is not the cause.
4. dropped     — the kernel freed one of our packets with a reason; reasons are
   translated into what they mean on veth/bridge setups (a QDISC_DROP on a
   carrier-less veth means the peer is down; NOT_SPECIFIED in
   __dev_forward_skb2 with a frame longer than the peer's MTU is an MTU
   mismatch). NO_SOCKET at ping_rcv is benign (every root ping reply).
5. no-reply    — a request reached the target interface and nothing came back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vethtrace.correlate import Packet, correlate_packets, is_benign_drop, phase
from vethtrace.model import (
    Finding,
    IfaceKey,
    Interface,
    PacketPath,
    ProbeEvent,
    Topology,
    Verdict,
)
from vethtrace.topology.query import route_lookup

# Plain words for kernel drop reasons we meet on veth/bridge/netns paths.
REASON_TEXT = {
    "QDISC_DROP": "the transmit queue refused it (on a veth: no carrier, the peer is down)",
    "NOT_SPECIFIED": "dropped without a specific reason",
    "NETFILTER_DROP": "a firewall rule (nftables/iptables) dropped it",
    "IP_RPFILTER": "the reverse-path filter dropped it (its source is routed via another device)",
    "NEIGH_FAILED": "the neighbour (ARP) entry failed: nobody answered the ARP request in time",
    "NEIGH_QUEUEFULL": "too many packets waited for ARP resolution",
    "IP_INNOROUTES": "no route for it on the receiving side",
    "IP_OUTNOROUTES": "no route to send it",
    "OTHERHOST": "it was addressed to another host's MAC",
    "PKT_TOO_BIG": "it was larger than the MTU",
    "DEV_READY": "the device was not ready (down)",
    "TC_INGRESS": "a tc ingress filter dropped it",
    "TC_EGRESS": "a tc egress filter dropped it",
    "XDP": "an XDP program dropped it",
    "BRIDGE_INGRESS_STP_STATE": "the bridge port is not forwarding (STP state)",
    "NO_SOCKET": "no socket wanted it",
    "IP_INADDRERRORS": "the destination address is invalid here",
    "UNHANDLED_PROTO": "no handler for the protocol",
    "CPU_BACKLOG": "the CPU backlog queue was full",
}
# Consequences rather than causes: ignored when looking for the drop that matters.
CONSEQUENCE_DROPS = {"NEIGH_FAILED", "NEIGH_QUEUEFULL", "NEIGH_DEAD"}
FORWARD_KINDS = {"arp-request", "arp-reply", "echo", "echo-reply"}
RESOLVED_STATES = {"REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"}
NO_REPLY_GRACE_NS = 1_200_000_000  # ARP/ping retransmit after 1 s: wait a little longer
SETTLE_NS = 30_000_000


@dataclass
class PingPlan:
    """What ping expects, worked out from the route lookup and the topology."""

    source: str  # netns name ("root" by default)
    source_inode: int
    target_netns: str
    target_inode: int
    ip: str
    src_addr: str | None = None  # the source address the kernel picked
    egress: IfaceKey | None = None
    egress_name: str | None = None
    gateway: str | None = None
    route_error: str | None = None
    owners: list[str] = field(default_factory=list)  # "netns/ifname" holding ip
    target_iface: IfaceKey | None = None
    path: list[IfaceKey] = field(default_factory=list)  # interfaces sniffed
    count: int = 1
    timeout: float = 5.0
    size: int = 56  # echo payload bytes
    started_ns: int = 0  # monotonic ns when sending began

    @property
    def nexthop(self) -> str:
        return self.gateway or self.ip


def _ns_name(topo: Topology, inode: int) -> str:
    ns = topo.netns(inode)
    return ns.name if ns else f"netns:{inode}"


def _iface(topo: Topology, key: IfaceKey | None) -> Interface | None:
    return topo.iface(key) if key else None


def _label(topo: Topology, key: IfaceKey | None) -> str:
    return topo.label(key) if key else "?"


def _ns_flag(topo: Topology, ns_inode: int) -> str:
    name = _ns_name(topo, ns_inode)
    return "" if name == "root" else f"-n {name} "


def ours(path: PacketPath, plan: PingPlan) -> bool:
    """Does this packet belong to our ping (its ARP or its ICMP)?"""
    s = path.summary
    if s is None:
        return False
    addrs = {plan.ip, plan.nexthop} | ({plan.src_addr} if plan.src_addr else set())
    if s.arp_op is not None:
        # our own resolution, a router's asking for the target, the target asking
        # where to send its reply, and their answers
        return bool({s.arp_spa, s.arp_tpa} & {plan.ip, plan.nexthop})
    if s.icmp_type is not None:
        return s.ip_src in addrs and s.ip_dst in addrs
    return False


@dataclass
class Analysis:
    """Everything decide() worked out; render uses it for the table and timeline."""

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
    pairs = [
        (k, p) for k, p in correlate_packets(events, topo) if ours(p, plan) and k.first_ns >= since
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
                "netns": _ns_name(topo, ev.netns),
                "interface": ev.ifname or f"if{ev.ifindex}",
                "address": n.address,
                "state": state,
                "lladdr": n.lladdr,
                "source": ev.source,
            }
        )
    return out


def decide(
    plan: PingPlan,
    events: list[ProbeEvent],
    topo: Topology,
    findings: list[Finding] | None = None,
    final: bool = True,
    now_ns: int | None = None,
) -> Verdict | None:
    """The verdict, or None when final is False and the evidence is not yet certain."""
    findings = findings or []
    if plan.route_error:
        return _unreachable(plan, topo, findings)
    a = analyse(plan, events, topo)
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


def annotated_paths(
    plan: PingPlan, events: list[ProbeEvent], topo: Topology, verdict: Verdict | None
) -> list[PacketPath]:
    """Our packets' paths with the hops that explain the verdict marked ✗ (for display)."""
    a = analyse(plan, events, topo)
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


def _holds(topo: Topology, hop: Any, address: str) -> bool:
    ns = topo.netns_by_name(hop.netns)
    it = ns.iface_by_name(hop.interface) if ns else None
    return it is not None and any(x.address == address for x in it.addresses)


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


def _forwarding_off(topo: Topology, inode: int) -> bool:
    ns = topo.netns(inode)
    return ns is not None and ns.sysctls.get("net.ipv4.ip_forward") == "0"


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


def _dropped(
    plan: PingPlan, topo: Topology, a: Analysis, findings: list[Finding], final: bool, now: int
) -> Verdict | None:
    for p in a.paths:
        if p.kind not in FORWARD_KINDS:
            continue  # an ICMP error looped back is a consequence, not the cause
        drops = [
            e
            for e in _events_of(p, a)
            if phase(e) == "drop"
            and not is_benign_drop(e)
            and e.drop_reason not in CONSEQUENCE_DROPS
        ]
        if not drops:
            continue
        ev = drops[0]
        if not final and now - ev.ts_ns < SETTLE_NS:
            return None
        return _explain_drop(plan, topo, p, ev, findings)
    return None


def _events_of(p: PacketPath, a: Analysis) -> list[ProbeEvent]:
    for k, path in zip(a.packets, a.paths, strict=True):
        if path is p:
            return k.events
    return []


def _explain_drop(
    plan: PingPlan, topo: Topology, p: PacketPath, ev: ProbeEvent, findings: list[Finding]
) -> Verdict:
    reason = ev.drop_reason or "NOT_SPECIFIED"
    loc = (ev.location or "").split("+")[0]
    dev = ev.key
    it = topo.iface(dev)
    where = _label(topo, dev) if it else f"{_ns_name(topo, ev.netns)}/{ev.ifname}"
    culprit: IfaceKey | None = dev
    words = REASON_TEXT.get(reason, reason.replace("_", " ").lower())
    fix: list[str] = []
    what = p.summary.describe() if p.summary else p.kind
    bridge = _master(topo, dev)
    if bridge is not None and bridge.kind == "bridge" and not bridge.admin_up:
        # a bridge that is down disables every port: frames die on ingress
        culprit = bridge.key
        words = (
            f"{bridge.name} is down, so all its ports are disabled and it drops every frame "
            f"arriving on {it.name if it else ev.ifname} instead of forwarding it"
        )
        fix = [f"ip {_ns_flag(topo, bridge.key.netns)}link set {bridge.name} up"]
    elif it is not None and it.kind == "loopback" and not it.admin_up:
        ns = _ns_name(topo, ev.netns)
        words = (
            f"lo is down in {ns}, and traffic to the namespace's own addresses is looped "
            "back through lo"
        )
        fix = [f"ip {_ns_flag(topo, dev.netns)}link set lo up"]
    elif it is not None and it.link is not None and not it.carrier:
        lower = topo.iface(it.link)
        if lower is not None and not lower.is_up:
            words = (
                f"{it.name} ({it.kind}) has no carrier because its lower device "
                f"{topo.label(lower.key)} is {'down' if not lower.admin_up else 'without carrier'}"
                f", so it drops what is sent through it"
            )
            fix = [f"ip {_ns_flag(topo, lower.key.netns)}link set {lower.name} up"]
    elif (
        it is not None
        and it.bridge_port is not None
        and it.bridge_port.state not in ("forwarding", "")
    ):
        words = (
            f"{it.name} is in STP state {it.bridge_port.state}: "
            f"{bridge.name if bridge else 'the bridge'} drops what it receives there until the "
            "port forwards (forward delay)"
        )
        if bridge is not None:
            fix = [
                f"ip {_ns_flag(topo, bridge.key.netns)}link set {bridge.name} type bridge "
                "stp_state 0   # if nothing can loop"
            ]
    elif reason == "IP_INADDRERRORS" and _forwarding_off(topo, ev.netns):
        ns = _ns_name(topo, ev.netns)
        words = (
            f"{ns} would have to route it, but net.ipv4.ip_forward=0 there: the kernel drops "
            "every packet it is not the destination of"
        )
        fix = [f"ip netns exec {ns} sysctl -w net.ipv4.ip_forward=1"]
    elif reason == "QDISC_DROP":
        found = _peer_down_culprit(topo, dev)
        if found:
            culprit, words = found[0], f"no carrier: {found[1]}"
            c = topo.iface(culprit)
            if c is not None:
                fix = [f"ip {_ns_flag(topo, culprit.netns)}link set {c.name} up"]
    elif loc in ("__dev_forward_skb2", "__dev_forward_skb", "veth_xmit") or (
        reason == "NOT_SPECIFIED" and it is not None and it.kind == "veth"
    ):
        peer = topo.iface(it.peer) if it and it.peer else None
        if peer is not None and it is not None:
            culprit = peer.key
            words = (
                f"the frame ({ev.length} bytes) does not fit the MTU of the veth peer "
                f"{topo.label(peer.key)} (mtu {peer.mtu}, sender {it.name} has mtu {it.mtu}): "
                "veth drops oversized frames silently"
            )
            fix = [f"ip {_ns_flag(topo, peer.key.netns)}link set {peer.name} mtu {it.mtu}"]
    elif reason == "NETFILTER_DROP":
        ns = _ns_name(topo, ev.netns)
        bridged = bridge is not None and bridge.kind == "bridge"
        words = f"a firewall rule in {ns} dropped it"
        if bridged and bridge is not None:
            # skb->dev is the egress port it never left through: the bridge is the place
            culprit = bridge.key
            words = (
                f"a firewall rule in {ns} dropped it while {bridge.name} bridged it "
                f"(net.bridge.bridge-nf-call-iptables=1 sends bridged frames through the "
                f"IP forward hook; {it.name if it else ev.ifname} is the port it was headed for)"
            )
        fix = [f"ip netns exec {ns} nft list ruleset   # find the rule that drops it"]
        if bridged:
            fix.append(f"ip netns exec {ns} sysctl -w net.bridge.bridge-nf-call-iptables=0")
    elif reason == "IP_RPFILTER":
        ns = _ns_name(topo, ev.netns)
        name = it.name if it else ev.ifname
        fix = [
            f"ip netns exec {ns} sysctl -w net.ipv4.conf.{name}.rp_filter=2",
            f"ip netns exec {ns} sysctl -w net.ipv4.conf.all.rp_filter=2",
        ]
    static = _fixes_from(findings, _ns_name(topo, culprit.netns) if culprit else None, None)
    c_it = topo.iface(culprit) if culprit else None
    return Verdict(
        kind="dropped",
        summary=f"{what} was dropped at {where}: {words}",
        culprit=culprit,
        culprit_netns=_ns_name(topo, culprit.netns) if culprit else None,
        culprit_interface=c_it.name if c_it else (ev.ifname if culprit == dev else None),
        explanation=(
            f"The kernel freed the {p.kind} at {where} with reason {reason}"
            f"{' in ' + loc if loc else ''}: {words}."
        ),
        fix=static + [f for f in fix if f not in static],
    )


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
            at = [e for e in _events_of(p, a) if _ns_name(topo, e.netns) == plan.target_netns]
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
        culprit_netns=_ns_name(topo, culprit.netns),
        culprit_interface=c.name if c else None,
        explanation=explanation
        + f" Our frames were last seen at {last.netns}/{last.interface} ({last.note}).",
        fix=_fixes_from(findings, _ns_name(topo, culprit.netns), None) or fix,
    )


def _no_carrier(plan: PingPlan, topo: Topology, findings: list[Finding]) -> Verdict | None:
    """Without kernel probes a frame queued to a carrier-less device is simply never
    seen; the topology still says why (the kernel drops it at the queue)."""
    egress = topo.iface(plan.egress)
    if egress is None or plan.egress is None or egress.carrier:
        return None
    found = _peer_down_culprit(topo, plan.egress)
    culprit, words = found if found else (plan.egress, f"{egress.name} has no carrier")
    c = topo.iface(culprit)
    ns = _ns_name(topo, culprit.netns)
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
