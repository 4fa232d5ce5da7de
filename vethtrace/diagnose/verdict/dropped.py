"""Dropped: the kernel freed one of our packets, with a reason.

Its own module because kernel drop reasons are terse and often misleading on
veth/bridge paths (a QDISC_DROP on a veth means its peer is down; NOT_SPECIFIED
in __dev_forward_skb2 is an MTU mismatch): this is where they become causes,
culprits and fixes.
"""

from __future__ import annotations

from vethtrace.correlate import phase
from vethtrace.diagnose.verdict.analysis import (
    SETTLE_NS,
    Analysis,
    _events_of,
    _fixes_from,
    _label,
    _master,
    _ns_flag,
    _peer_down_culprit,
)
from vethtrace.diagnose.verdict.plan import PingPlan
from vethtrace.model import (
    Finding,
    IfaceKey,
    Interface,
    PacketPath,
    ProbeEvent,
    Topology,
    Verdict,
)
from vethtrace.points import is_benign_drop

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
    "NO_TX_TARGET": "the device had nowhere to send it (on a VXLAN device: no FDB entry for "
    "its destination MAC, no default 00:00:00:00:00:00 entry, no learning; a broadcast ARP "
    "request cannot cross it, so the node needs a neighbour entry for the remote VTEP)",
}
# Consequences rather than causes: ignored when looking for the drop that matters.
CONSEQUENCE_DROPS = {"NEIGH_FAILED", "NEIGH_QUEUEFULL", "NEIGH_DEAD"}
FORWARD_KINDS = {"arp-request", "arp-reply", "echo", "echo-reply"}


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
        return _explain_drop(plan, topo, p, ev, findings, a)
    return None


def _forwarding_off(topo: Topology, inode: int) -> bool:
    ns = topo.netns(inode)
    return ns is not None and ns.sysctls.get("net.ipv4.ip_forward") == "0"


def _explain_drop(
    plan: PingPlan,
    topo: Topology,
    p: PacketPath,
    ev: ProbeEvent,
    findings: list[Finding],
    a: Analysis | None = None,
) -> Verdict:
    reason = ev.drop_reason or "NOT_SPECIFIED"
    loc = (ev.location or "").split("+")[0]
    dev = ev.key
    it = topo.iface(dev)
    where = _label(topo, dev) if it else f"{topo.netns_name(ev.netns)}/{ev.ifname}"
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
        ns = topo.netns_name(ev.netns)
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
        ns = topo.netns_name(ev.netns)
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
        ns = topo.netns_name(ev.netns)
        bridged = bridge is not None and bridge.kind == "bridge"
        words = f"a firewall rule in {ns} dropped it"
        inport = _ingress_port(topo, _events_of(p, a), ev, bridge) if bridged and a else None
        if bridged and bridge is not None and inport is not None and _bridge_family(topo, ev):
            # the bridge family's own hooks: the kernel ran them with indev = the port the
            # frame came in by (skb->dev is already the egress port in the forward hook)
            culprit = inport.key
            words = (
                f"a bridge-family nftables rule in {ns} dropped it as {bridge.name} forwarded "
                f"it from {inport.name}"
                + (f" to {it.name}" if it is not None and it.key != inport.key else "")
            )
        elif bridged and bridge is not None:
            # skb->dev is the egress port it never left through: the bridge is the place
            culprit = bridge.key
            words = (
                f"a firewall rule in {ns} dropped it while {bridge.name} bridged it "
                f"(net.bridge.bridge-nf-call-iptables=1 sends bridged frames through the "
                f"IP forward hook; {it.name if it else ev.ifname} is the port it was headed for)"
            )
        fix = [f"ip netns exec {ns} nft list ruleset   # find the rule that drops it"]
        # bridged: the bridge it crossed; routed: the device it came in by (maybe a bridge)
        via = bridge.name if bridged and bridge else (it.name if it else None)
        dst = p.summary.ip_dst if p.summary else None
        runtime = _runtime_words(topo, ev.netns, via, dst)
        if runtime:  # a container runtime's isolation: never advise switching it off
            words = f"{words}; {runtime}"
            hdr = p.summary
            if runtime.endswith("see DOCKER-USER for exceptions)") and hdr and hdr.ip_src:
                # Docker keeps the user's exceptions in DOCKER-USER, ahead of its own rules
                fix.append(f"ip netns exec {ns} iptables -I DOCKER-USER -s {hdr.ip_src} "
                           f"-d {hdr.ip_dst} -j ACCEPT   # only if this flow should pass")
        elif bridged and bridge is not None and culprit == bridge.key:
            fix.append(f"ip netns exec {ns} sysctl -w net.bridge.bridge-nf-call-iptables=0")
    elif reason.startswith("VXLAN_") and ev.packet is not None and ev.packet.encap is not None:
        vx = _vxlan_culprit(topo, ev)
        if vx is not None:
            culprit, words, fix = vx
    elif reason == "IP_RPFILTER":
        ns = topo.netns_name(ev.netns)
        name = it.name if it else ev.ifname
        fix = [
            f"ip netns exec {ns} sysctl -w net.ipv4.conf.{name}.rp_filter=2",
            f"ip netns exec {ns} sysctl -w net.ipv4.conf.all.rp_filter=2",
        ]
    static = _fixes_from(findings, topo.netns_name(culprit.netns) if culprit else None, None)
    c_it = topo.iface(culprit) if culprit else None
    return Verdict(
        kind="dropped",
        summary=f"{what} was dropped at {where}: {words}",
        culprit=culprit,
        culprit_netns=topo.netns_name(culprit.netns) if culprit else None,
        culprit_interface=c_it.name if c_it else (ev.ifname if culprit == dev else None),
        explanation=(
            f"The kernel freed the {p.kind} at {where} with reason {reason}"
            f"{' in ' + loc if loc else ''}: {words}."
        ),
        fix=static + [f for f in fix if f not in static],
    )


def _ingress_port(
    topo: Topology, events: list[ProbeEvent], ev: ProbeEvent, bridge: Interface | None
) -> Interface | None:
    """The port of `bridge` the dropped frame came in by: the last port of it the
    packet was received on before the drop (the hook's indev)."""
    if bridge is None:
        return None
    for e in sorted(events, key=lambda x: x.ts_ns, reverse=True):
        if e.ts_ns > ev.ts_ns or e.netns != ev.netns or phase(e) != "rx":
            continue
        port = topo.iface(e.key)
        if port is not None and port.master == bridge.key.ifindex:
            return port
    return None


def _bridge_family(topo: Topology, ev: ProbeEvent) -> bool:
    """Was it the bridge family's own forward/prerouting chains that could drop it
    here, and not br_netfilter's pass of bridged IP through the ip/inet hooks?
    Decided from the namespace's ruleset: which of the two has base chains."""
    from vethtrace.diagnose.path.nft import FAMILIES, Ruleset

    ns = topo.netns(ev.netns)
    if ns is None or not ns.nft:
        return False
    try:
        rs = Ruleset.parse(ns.nft)
    except Exception:  # an unreadable ruleset: say nothing about its family
        return False
    own = any(rs.base(("bridge",), h) for h in ("prerouting", "forward"))
    brnf = ns.sysctls.get("net.bridge.bridge-nf-call-iptables") == "1" and any(
        rs.base(FAMILIES[4], h) for h in ("prerouting", "forward")
    )
    return own and not brnf


def _runtime_words(
    topo: Topology, inode: int, bridge: str | None, dst: str | None = None
) -> str | None:
    """What a container runtime's firewall in this namespace means by the drop of a
    packet to `dst` on (or coming in by) the network bridge `bridge`."""
    from vethtrace.diagnose.rules.containers import managed_network, network_of, runtime_firewall

    ns = topo.netns(inode)
    owner = runtime_firewall(ns) if ns else None
    if ns is None or owner is None:
        return None
    net = managed_network(ns, bridge) if bridge else None
    target = network_of(ns, dst) if dst else None
    if net is not None and target is not None and target is not net:
        return (f"{owner} networks {net.name} and {target.name} are isolated from each other: "
                f"its rules drop what is routed from {net.bridge} to {target.bridge} on purpose "
                f"(a container on both networks reaches both)")
    net = net or target
    if net is not None and not net.icc:
        return (f"{owner} network {net.name} has inter-container communication off "
                f"(enable_icc=false): its rules drop traffic between its containers on purpose")
    if net is not None and net.internal:
        return f"{owner} network {net.name} is internal: its rules drop what leaves or enters it"
    if owner == "docker":
        return "the firewall is docker's (its isolation rules; see DOCKER-USER for exceptions)"
    return f"the firewall is {owner}'s (its isolation rules)"


def _vxlan_culprit(
    topo: Topology, ev: ProbeEvent
) -> tuple[IfaceKey, str, list[str]] | None:
    """A datagram dropped by the VXLAN receive path (skb->dev is still the
    underlay device it came in by): the place is the VXLAN device of that
    namespace bound to the datagram's port, the one that should have taken it."""
    en = ev.packet.encap if ev.packet else None
    ns = topo.netns(ev.netns)
    if en is None or ns is None:
        return None
    devs = [i for i in ns.interfaces if i.vxlan is not None and i.vxlan.port == en.dport]
    if not devs:
        return None
    dev = next((d for d in devs if d.vxlan and d.vxlan.vni == en.vni), devs[0])
    name, vni = dev.name, dev.vxlan.vni if dev.vxlan else None
    nsname = topo.netns_name(ev.netns)
    reason = ev.drop_reason or ""
    if reason == "VXLAN_VNI_NOT_FOUND":
        words = (
            f"it arrived in UDP port {en.dport} with VNI {en.vni}, but {name} in {nsname} "
            f"(the VXLAN device on that port) has VNI {vni}: the two nodes disagree on the VNI"
        )
        fix = [
            f"ip -n {nsname} link del {name}; ip -n {nsname} link add {name} type vxlan "
            f"id {en.vni} dstport {en.dport} ...   # same VNI on every node, then its "
            "addresses, routes, neighbour and FDB entries again"
        ]
    else:
        words = f"{name} in {nsname} dropped the VXLAN datagram ({reason})"
        fix = [f"ip -d -n {nsname} link show {name}"]
    return dev.key, words, fix
