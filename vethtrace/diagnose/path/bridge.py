"""Layer 2: a frame leaving an interface, across veth pairs and bridges, to
the IP stacks that receive it.

Follows the kernel's bridge: br_handle_frame (port state, learning), the FDB
lookup (local entries for the bridge's and its ports' own MACs -> the bridge's
stack; static and learned entries -> a port; none -> flood), br_flood's
per-port flood/bcast_flood flags, should_deliver (hairpin, forwarding state,
isolation), br_netfilter (bridged IP through the ip/inet forward hook when
bridge-nf-call-iptables=1) and nft bridge-family forward chains. VLAN
filtering and neigh_suppress are not modelled: an *unknown* hop says so.

A broadcast or a flood branches: `send` returns every stack reached
(`Reached`) and every branch that died (`Dead`, with how much it matters:
a flooded frame that other hosts ignore is expected, a port that is down is
not), so the caller can name the decision on the branch that mattered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vethtrace.diagnose.path.flow import Hop, Packet
from vethtrace.model import Interface, Namespace

if TYPE_CHECKING:
    from vethtrace.diagnose.path.walk import Walker


@dataclass
class Frame:
    src_mac: str | None
    dst_mac: str | None  # None: broadcast
    pkt: Packet | None = None  # the IP packet inside (None: ARP)
    size: int = 28  # L3 length (an ARP body is 28 bytes)


@dataclass
class Dead:
    hops: list[Hop]
    weight: int = 1  # 0: the frame was simply not for that host (flooded)


@dataclass
class L2Result:
    reached: list[tuple[Interface, list[Hop]]] = field(default_factory=list)
    dead: list[Dead] = field(default_factory=list)

    def add(self, other: L2Result) -> None:
        self.reached += other.reached
        self.dead += other.dead

    def worst(self) -> list[Hop]:
        if not self.dead:
            return []
        return max(self.dead, key=lambda d: d.weight).hops


def send(w: Walker, iface: Interface, frame: Frame, trail: list[Hop]) -> L2Result:
    """`iface` transmits `frame` (its own stack sends, or a bridge forwards to it)."""
    ns = w.ns_of(iface)
    out = L2Result()
    if not iface.admin_up:
        out.dead.append(
            Dead(
                [
                    *trail,
                    w.hop(
                        ns,
                        iface,
                        "l2",
                        f"{iface.name} is down: nothing leaves",
                        "link state DOWN",
                        "fail",
                        f"{iface.name} is administratively down",
                        [w.cmd(ns, f"ip link set {iface.name} up")],
                    ),
                ]
            )
        )
        return out
    if iface.kind == "bridge":
        return bridge_forward(w, iface, None, frame, trail)
    if iface.kind == "loopback":
        out.reached.append((iface, trail))
        return out
    if iface.kind != "veth" and not iface.carrier:
        lower = w.topo.iface(iface.link)
        fix = [w.cmd(w.ns_of(lower), f"ip link set {lower.name} up")] if lower else []
        why = f" (its lower device {lower.name} is down)" if lower and not lower.admin_up else ""
        hop = w.hop(
            ns,
            iface,
            "l2",
            f"{iface.name} has no carrier",
            f"link {iface.name} NO-CARRIER",
            "fail",
            f"{iface.name} is up but has no carrier{why}: nothing is transmitted",
            fix,
        )
        out.dead.append(Dead([*trail, hop]))
        return out
    if iface.kind != "veth":
        out.dead.append(
            Dead(
                [
                    *trail,
                    w.hop(
                        ns,
                        iface,
                        "l2",
                        f"leaves through a {iface.kind} device",
                        f"kind {iface.kind}",
                        "unknown",
                        f"frames leaving a {iface.kind} device are not modelled",
                    ),
                ]
            )
        )
        return out
    peer = w.topo.iface(iface.peer)
    if peer is None:
        out.dead.append(
            Dead(
                [
                    *trail,
                    w.hop(
                        ns,
                        iface,
                        "veth",
                        "peer not found",
                        f"peer {iface.peer_state}",
                        "unknown",
                        f"the peer of {iface.name} is out of sight "
                        f"({iface.peer_state or 'partial discovery'})",
                    ),
                ]
            )
        )
        return out
    pns = w.ns_of(peer)
    if not peer.admin_up or not iface.carrier:
        out.dead.append(
            Dead(
                [
                    *trail,
                    w.hop(
                        ns,
                        iface,
                        "veth",
                        f"no carrier: peer {pns.name}/{peer.name} is down",
                        f"link {pns.name}/{peer.name} state DOWN",
                        "fail",
                        f"{peer.name}, the other end of {iface.name}, is down, so "
                        f"{iface.name} has no carrier and veth_xmit drops every frame",
                        [w.cmd(pns, f"ip link set {peer.name} up")],
                    ),
                ]
            )
        )
        return out
    if frame.size > peer.mtu:
        out.dead.append(
            Dead(
                [
                    *trail,
                    w.hop(
                        ns,
                        iface,
                        "veth",
                        f"{frame.size}-byte frame over {peer.name}'s MTU",
                        f"mtu {pns.name}/{peer.name} {peer.mtu}",
                        "fail",
                        f"a {frame.size}-byte packet exceeds the MTU {peer.mtu} of "
                        f"{peer.name}: the veth drops it (is_skb_forwardable)",
                        [w.cmd(pns, f"ip link set {peer.name} mtu {iface.mtu}")],
                    ),
                ]
            )
        )
        return out
    hop = w.hop(
        ns, iface, "veth", f"crosses to {pns.name}/{peer.name}", f"veth peer {pns.name}/{peer.name}"
    )
    return receive(w, peer, frame, [*trail, hop])


def receive(w: Walker, iface: Interface, frame: Frame, trail: list[Hop]) -> L2Result:
    out = L2Result()
    if (iface.key, frame.dst_mac) in w.l2_seen:
        return out
    w.l2_seen.add((iface.key, frame.dst_mac))
    ns = w.ns_of(iface)
    master = ns.iface(iface.master) if iface.master is not None else None
    if master is not None:
        if master.kind == "bridge":
            return bridge_input(w, master, iface, frame, trail)
        out.dead.append(
            Dead(
                [
                    *trail,
                    w.hop(
                        ns,
                        iface,
                        "l2",
                        f"enslaved to {master.kind} {master.name}",
                        f"master {master.name}",
                        "unknown",
                        f"frames arriving at a {master.kind} slave are not modelled",
                    ),
                ]
            )
        )
        return out
    if frame.dst_mac is None or frame.dst_mac == iface.mac:
        out.reached.append((iface, trail))
    else:
        out.dead.append(
            Dead(
                [
                    *trail,
                    w.hop(
                        ns,
                        iface,
                        "l2",
                        f"frame for {frame.dst_mac} is not for {iface.name} ({iface.mac})",
                        "",
                        "fail",
                        "the destination MAC is not this interface's: dropped as PACKET_OTHERHOST",
                    ),
                ],
                weight=0,
            )
        )
    return out


def fdb_lookup(w: Walker, ns: Namespace, br: Interface, mac: str) -> tuple[str, int | None, str]:
    """("local"|"port"|"none", port ifindex, the entry) as br_fdb_find_rcu answers."""
    if mac == br.mac:
        return "local", None, f"fdb {mac} dev {br.name} (the bridge's own address)"
    ports = [i for i in ns.interfaces if i.master == br.key.ifindex]
    static = None
    dynamic = None
    for e in ns.fdb:
        if e.mac != mac or "self" in e.flags:
            continue
        if e.master not in (br.key.ifindex, None) or (
            e.master is None and e.ifindex != br.key.ifindex
        ):
            continue
        if "permanent" in e.flags:
            dev = ns.iface(e.ifindex)
            return (
                "local",
                None,
                f"fdb {mac} dev {dev.name if dev else e.ifindex} permanent (local)",
            )
        if "static" in e.flags:
            static = e
        else:
            dynamic = e
    for p in ports:
        if p.mac == mac:
            return "local", None, f"fdb {mac} dev {p.name} permanent (a port's own address)"
    if static is not None:
        dev = ns.iface(static.ifindex)
        return "port", static.ifindex, f"fdb {mac} dev {dev.name if dev else static.ifindex} static"
    learned = w.learned.get(br.key, {}).get(mac)
    if learned is not None:
        dev = ns.iface(learned)
        return "port", learned, f"fdb {mac} dev {dev.name if dev else learned} (learned)"
    if dynamic is not None:
        dev = ns.iface(dynamic.ifindex)
        return (
            "port",
            dynamic.ifindex,
            f"fdb {mac} dev {dev.name if dev else dynamic.ifindex} (learned)",
        )
    return "none", None, f"no fdb entry for {mac}"


def bridge_input(
    w: Walker, br: Interface, port: Interface, frame: Frame, trail: list[Hop]
) -> L2Result:
    ns = w.ns_of(br)
    out = L2Result()
    bp = port.bridge_port
    state = bp.state if bp else "forwarding"
    if not br.admin_up:
        out.dead.append(
            Dead(
                [
                    *trail,
                    w.hop(
                        ns,
                        port,
                        "bridge",
                        f"bridge {br.name} is down: port disabled",
                        f"link {br.name} state DOWN",
                        "fail",
                        f"{br.name} is down, so all its ports are disabled and drop frames",
                        [w.cmd(ns, f"ip link set {br.name} up")],
                    ),
                ]
            )
        )
        return out
    if br.vlan_filtering:
        out.dead.append(
            Dead(
                [
                    *trail,
                    w.hop(
                        ns,
                        port,
                        "bridge",
                        "VLAN filtering",
                        f"bridge {br.name} vlan_filtering 1",
                        "unknown",
                        "bridge VLAN filtering is not modelled",
                    ),
                ]
            )
        )
        return out
    if state not in ("forwarding", "learning"):
        out.dead.append(
            Dead(
                [
                    *trail,
                    w.hop(
                        ns,
                        port,
                        "bridge",
                        f"port {port.name} is {state}: frame dropped",
                        f"bridge link {port.name} state {state}",
                        "fail",
                        f"a bridge port in state {state} drops what it receives",
                        [w.cmd(ns, f"bridge link set dev {port.name} state 3")],
                    ),
                ]
            )
        )
        return out
    if bp is not None and bp.learning and frame.src_mac:
        w.learned.setdefault(br.key, {})[frame.src_mac] = port.key.ifindex
    if state == "learning":
        out.dead.append(
            Dead(
                [
                    *trail,
                    w.hop(
                        ns,
                        port,
                        "bridge",
                        f"port {port.name} is learning: frame dropped",
                        f"bridge link {port.name} state learning",
                        "fail",
                        "a port in the learning state learns addresses but forwards nothing",
                        [w.cmd(ns, f"bridge link set dev {port.name} state 3")],
                    ),
                ]
            )
        )
        return out
    if frame.pkt is None and bp is not None and bp.neigh_suppress:
        out.dead.append(
            Dead(
                [
                    *trail,
                    w.hop(
                        ns,
                        port,
                        "bridge",
                        "neigh_suppress",
                        f"bridge link {port.name} neigh_suppress on",
                        "unknown",
                        "neigh_suppress is not modelled",
                    ),
                ]
            )
        )
        return out
    return bridge_forward(w, br, port, frame, trail)


def bridge_forward(
    w: Walker, br: Interface, ingress: Interface | None, frame: Frame, trail: list[Hop]
) -> L2Result:
    """Where br sends a frame that arrived on `ingress` (None: br's own stack sent it)."""
    ns = w.ns_of(br)
    out = L2Result()
    ports = [i for i in ns.interfaces if i.master == br.key.ifindex and i is not ingress]
    at = ingress or br
    if frame.dst_mac is None:
        flag = "bcast_flood"
        targets = ports
        decision = f"{br.name} floods the broadcast"
        source = "broadcast"
        if ingress is not None:  # delivered up to the bridge's own stack too
            out.reached.append(
                (
                    br,
                    [
                        *trail,
                        w.hop(ns, br, "bridge", f"{br.name} takes the broadcast up", "broadcast"),
                    ],
                )
            )
    else:
        kind, port_index, source = fdb_lookup(w, ns, br, frame.dst_mac)
        if kind == "local":
            if ingress is None:
                out.reached.append((br, trail))
            else:
                out.reached.append(
                    (
                        br,
                        [*trail, w.hop(ns, ingress, "bridge", f"to {br.name}'s own stack", source)],
                    )
                )
            return out
        if kind == "port":
            target = ns.iface(port_index)
            if target is None:
                return out
            if ingress is not None and target.key == ingress.key:
                hair = ingress.bridge_port is not None and ingress.bridge_port.hairpin
                if not hair:
                    out.dead.append(
                        Dead(
                            [
                                *trail,
                                w.hop(
                                    ns,
                                    ingress,
                                    "bridge",
                                    f"{frame.dst_mac} is behind the ingress port",
                                    source,
                                    "fail",
                                    f"the FDB puts {frame.dst_mac} behind {ingress.name}, where "
                                    "the frame came from, and hairpin is off",
                                    [w.cmd(ns, f"bridge link set dev {ingress.name} hairpin on")],
                                ),
                            ]
                        )
                    )
                    return out
            targets, flag, decision = [target], "", f"{br.name} forwards to {target.name}"
        else:
            targets, flag, decision = (
                ports,
                "flood",
                f"{br.name} floods unknown unicast {frame.dst_mac}",
            )
    if frame.pkt is not None and ingress is not None:
        verdict, hops = w.br_netfilter(ns, br, frame.pkt)
        trail = trail + hops
        if verdict != "accept":
            out.dead.append(Dead(trail))
            return out
    for q in targets:
        bq = q.bridge_port
        qstate = bq.state if bq else "forwarding"
        hop_src = source
        if flag and bq is not None and not getattr(bq, flag):
            out.dead.append(
                Dead(
                    [
                        *trail,
                        w.hop(
                            ns,
                            q,
                            "bridge",
                            f"{flag} off on {q.name}: not flooded there",
                            f"bridge link {q.name} {flag} off",
                            "fail",
                            f"{q.name} has {flag} off, so {br.name} does not flood "
                            f"{'broadcasts' if flag == 'bcast_flood' else 'unknown unicast'} "
                            f"to it"
                            + (
                                ""
                                if flag == "bcast_flood" or bq.learning
                                else f", and with learning off on {q.name} its hosts' "
                                "addresses are never in the FDB"
                            ),
                            [
                                w.cmd(
                                    ns, f"bridge link set dev {q.name} {flag.replace('_', '_')} on"
                                )
                            ],
                        ),
                    ]
                )
            )
            continue
        if qstate != "forwarding":
            out.dead.append(
                Dead(
                    [
                        *trail,
                        w.hop(
                            ns,
                            q,
                            "bridge",
                            f"port {q.name} is {qstate}: not sent there",
                            f"bridge link {q.name} state {qstate}",
                            "fail",
                            f"a bridge port in state {qstate} transmits nothing"
                            + (" (it is down)" if qstate == "disabled" else ""),
                            [
                                w.cmd(ns, f"ip link set {q.name} up")
                                if qstate == "disabled"
                                else w.cmd(ns, f"bridge link set dev {q.name} state 3")
                            ],
                        ),
                    ]
                )
            )
            continue
        if (
            ingress is not None
            and ingress.bridge_port
            and ingress.bridge_port.isolated
            and bq
            and bq.isolated
        ):
            out.dead.append(
                Dead(
                    [
                        *trail,
                        w.hop(
                            ns,
                            q,
                            "bridge",
                            f"{ingress.name} and {q.name} are isolated",
                            f"bridge link {q.name} isolated on",
                            "fail",
                            "two isolated ports never exchange frames",
                            [w.cmd(ns, f"bridge link set dev {q.name} isolated off")],
                        ),
                    ]
                )
            )
            continue
        if frame.pkt is not None and ingress is not None:
            verdict, hops = w.nft_hook(ns, "bridge", "forward", frame.pkt, ingress.name, q.name)
            if verdict != "accept":
                out.dead.append(Dead(trail + hops))
                continue
        else:
            hops = []
        if frame.dst_mac is None and _bystander(w, q, frame):
            continue
        hop = w.hop(
            ns, at, "bridge", decision if len(targets) == 1 else f"{decision}: {q.name}", hop_src
        )
        out.add(_flood_to(w, q, frame, trail + hops + [hop]))
    return out


def _bystander(w: Walker, q: Interface, frame: Frame) -> bool:
    """An ARP request flooded to a port whose veth peer is a plain stack that can
    neither answer for the address asked (w.arp_for) nor proxy it: the frame ends
    there unanswered, so the walk need not follow it (a flood on a 500-port
    bridge otherwise follows 500 of them). neigh.arp walks again without this
    when nobody answers, to say who heard the request."""
    if w.arp_for is None or frame.pkt is not None or q.kind != "veth":
        return False
    memo = w.floods  # shared by a Predictor's walks: both answers are per topology
    plain = memo.get(("plain", q.key))
    if plain is None:
        peer = w.topo.iface(q.peer)
        plain = memo[("plain", q.key)] = (
            peer is not None and peer.master is None and peer.admin_up
        )
    if not plain:
        return False
    idx = memo.get("answerers")
    if idx is None:
        idx = memo["answerers"] = _answerers(w)
    holders, proxies = idx
    peer_key = q.peer
    assert peer_key is not None
    return peer_key.netns not in holders.get(w.arp_for, ()) and peer_key not in proxies.get(
        w.arp_for, proxies[None]
    )


def _answerers(w: Walker) -> tuple[dict[str, set[int]], dict[str | None, set[object]]]:
    """Who might answer ARP at all, once per topology: address -> namespaces
    holding it; and the interfaces that proxy (proxy_arp on: any address, key
    None; a proxy entry: that address)."""
    from vethtrace.diagnose.path.route import conf, ip

    holders: dict[str, set[int]] = {}
    proxies: dict[str | None, set[object]] = {None: set()}
    for ns in w.topo.namespaces:
        for i in ns.interfaces:
            for a in i.addresses:
                holders.setdefault(str(ip(a.address)), set()).add(ns.inode)
            if conf(ns, i, "proxy_arp"):
                proxies[None].add(i.key)
    for ns in w.topo.namespaces:
        for p in ns.proxy_neighbours:
            for i in ns.interfaces:
                proxies.setdefault(p.address, set(proxies[None])).add(i.key)
    return holders, proxies


def _flood_to(w: Walker, q: Interface, frame: Frame, trail: list[Hop]) -> L2Result:
    """send(w, q, frame, trail), remembered across walks for an ARP broadcast
    to a port whose veth peer is a plain stack (no bridge behind it, so the send
    learns nothing and cannot loop): check floods the same 500-port bridge for
    every container, and this keeps each flood to a copy per port."""
    peer = w.topo.iface(q.peer) if q.kind == "veth" and frame.dst_mac is None else None
    if frame.pkt is not None or peer is None or peer.master is not None:
        return send(w, q, frame, trail)
    key = (q.key, frame.src_mac, frame.size)
    cached = w.floods.get(key)
    if cached is None:
        cached = w.floods[key] = send(w, q, frame, [])
    return L2Result(
        [(r, trail + t) for r, t in cached.reached],
        [Dead(trail + d.hops, d.weight) for d in cached.dead],
    )
