"""VXLAN devices in the path model: a frame leaving a vxlan device is
encapsulated (the device's FDB names the remote VTEP for the destination MAC,
or its all-zeros default entries for broadcast and unknown MACs), the outer
UDP packet walks the underlay like any packet the node sends (routing,
neighbours, bridges, nft), and the remote node decapsulates it when a vxlan
device there listens on that UDP port with that VNI; the inner frame then
arrives on that device as if it had come off a wire.

Why a module of its own: encapsulation nests one walk inside another, and the
overlay's own failures (no FDB entry, an entry pointing where no VTEP is, an
ARP that cannot cross a device without learning, the 50-byte MTU budget, a
VNI nobody decapsulates) each need their own cause and fix. Hops of the outer
packet are marked with OUTER at the start of their decision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vethtrace.diagnose.path import l2
from vethtrace.diagnose.path.flow import Hop, Packet
from vethtrace.diagnose.path.route import lookup
from vethtrace.model import Interface, Namespace, Topology
from vethtrace.topology.query import l2_domain

if TYPE_CHECKING:
    from vethtrace.diagnose.path.walk import End, Walker

OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14 bytes
OUTER = "outer: "  # prefix of the decisions about the encapsulated packet
ZERO = "00:00:00:00:00:00"
SPORT = 49152  # the outer source port is a flow hash; any value decides the same


def send(w: Walker, iface: Interface, frame: l2.Frame, trail: list[Hop]) -> l2.L2Result:
    """`iface` (a vxlan device) transmits `frame`: encapsulate, walk the underlay,
    decapsulate at the remote VTEP and receive the inner frame there."""
    ns = w.ns_of(iface)
    out = l2.L2Result()
    vx = iface.vxlan
    if vx is None:
        hop = w.hop(
            ns,
            iface,
            "vxlan",
            "vxlan settings unknown",
            "kind vxlan",
            "unknown",
            "the snapshot has no VXLAN settings for this device",
        )
        out.dead.append(l2.Dead([*trail, hop]))
        return out
    if w.arp_for:
        w.vxlan_arp_for = w.arp_for  # type: ignore[attr-defined]
    dsts = destinations(ns, iface, frame.dst_mac)
    if not dsts:
        out.dead.append(l2.Dead([*trail, _no_destination(w, ns, iface, frame)]))
        return out
    for dst, source in dsts:
        need = frame.size + OVERHEAD
        under = lookup(ns, dst, vx.local)
        if under.oif is not None and need > under.oif.mtu:
            hop = _mtu_hop(w, ns, iface, frame.size, under.oif)
            out.dead.append(l2.Dead([*trail, hop]))
            continue
        encap = w.hop(
            ns, iface, "vxlan", f"encapsulates to {dst} (VNI {vx.vni}, udp/{vx.port})", source
        )
        outer = Packet(vx.local, dst, "udp", SPORT, vx.port, need)
        hops, end = _outer_walk(w, ns, outer)
        if end.kind != "delivered" or end.ns is None:
            first = [encap]
            if end.kind == "failed" and not holds(w.topo, dst):
                first = [_wrong_dst(w, ns, iface, frame.dst_mac, dst, source)]
            out.dead.append(l2.Dead([*trail, *first, *hops]))
            continue
        rdev, hop = _decap(w, end.ns, iface, vx.vni, vx.port, outer)
        if rdev is None:
            out.dead.append(l2.Dead([*trail, encap, *hops, hop]))
            continue
        inner = l2.Frame(frame.src_mac, frame.dst_mac, frame.pkt, frame.size)
        out.add(l2.receive(w, rdev, inner, [*trail, encap, *hops, hop]))
    return out


def destinations(ns: Namespace, iface: Interface, mac: str | None) -> list[tuple[str, str]]:
    """(remote VTEP, the entry it came from) for a frame to `mac` (None: broadcast):
    the entry for the MAC, else the all-zeros entries (vxlan_xmit's fallback)."""
    entries = [e for e in ns.fdb if e.ifindex == iface.key.ifindex and e.dst]
    exact = [e for e in entries if mac is not None and e.mac == mac]
    chosen = exact or [e for e in entries if e.mac == ZERO]
    out = [(e.dst or "", f"fdb {e.mac} dev {iface.name} dst {e.dst}") for e in chosen]
    if not out and iface.vxlan is not None and iface.vxlan.group:
        out = [(iface.vxlan.group, f"vxlan {iface.name} remote {iface.vxlan.group}")]
    return out


def holds(topo: Topology, address: str) -> bool:
    return any(
        a.address == address for ns in topo.namespaces for i in ns.interfaces for a in i.addresses
    )


def vteps(topo: Topology) -> list[tuple[Namespace, Interface]]:
    return [(ns, i) for ns in topo.namespaces for i in ns.interfaces if i.vxlan is not None]


def _underlay_address(ns: Namespace, dev: Interface) -> str | None:
    """The underlay address a VTEP sends from (its local, else its device's first)."""
    if dev.vxlan is not None and dev.vxlan.local:
        return dev.vxlan.local
    link = ns.iface(dev.vxlan.link) if dev.vxlan is not None else None
    return next((a.address for a in (link.addresses if link else []) if a.family == 4), None)


def _no_destination(w: Walker, ns: Namespace, iface: Interface, frame: l2.Frame) -> Hop:
    if frame.dst_mac is None:  # an ARP request: nothing to flood it to
        # neigh.arp walks a request that nobody answered a second time without arp_for
        tip = w.arp_for or getattr(w, "vxlan_arp_for", None) or "?"
        owner = next(
            (
                (n, d)
                for n, d in vteps(w.topo)
                if d.key != iface.key and any(a.address == tip for a in d.addresses)
            ),
            None,
        )
        fix = (
            [
                w.cmd(
                    ns,
                    f"ip neigh replace {tip} lladdr {owner[1].mac} dev {iface.name} nud permanent",
                )
            ]
            if owner
            else []
        )
        return w.hop(
            ns,
            iface,
            "vxlan-neigh",
            f"ARP for {tip} cannot leave {iface.name}",
            f"neigh {tip} dev {iface.name} (none); fdb {ZERO} dev {iface.name} (none)",
            "fail",
            f"{ns.name} has no neighbour entry for {tip} on {iface.name}, and the ARP request "
            f"sent instead has nowhere to go: {iface.name} has no default FDB destination "
            f"({ZERO}) and learns nothing, so it drops it",
            fix,
        )
    owner = next(
        ((n, d) for n, d in vteps(w.topo) if d.mac == frame.dst_mac and d.key != iface.key), None
    )
    dst = _underlay_address(*owner) if owner else None
    fix = (
        [w.cmd(ns, f"bridge fdb append {frame.dst_mac} dev {iface.name} dst {dst}")] if dst else []
    )
    return w.hop(
        ns,
        iface,
        "vxlan-fdb",
        f"no FDB entry for {frame.dst_mac}",
        f"fdb {frame.dst_mac} dev {iface.name} (none)",
        "fail",
        f"{iface.name} has no FDB entry saying which VTEP holds {frame.dst_mac}"
        + (f" ({owner[1].name} in {owner[0].name}, at {dst})" if owner and dst else "")
        + f", no default destination ({ZERO}) and no learning: it drops the frame",
        fix,
    )


def _wrong_dst(
    w: Walker, ns: Namespace, iface: Interface, mac: str | None, dst: str, source: str
) -> Hop:
    owner = next(((n, d) for n, d in vteps(w.topo) if mac and d.mac == mac), None)
    right = _underlay_address(*owner) if owner else None
    fix = []
    if right and mac:
        fix = [
            w.cmd(ns, f"bridge fdb del {mac} dev {iface.name} dst {dst}"),
            w.cmd(ns, f"bridge fdb append {mac} dev {iface.name} dst {right}"),
        ]
    return w.hop(
        ns,
        iface,
        "vxlan-fdb-dst",
        f"encapsulates to {dst}, where no VTEP is",
        source,
        "fail",
        f"{iface.name}'s FDB sends {mac or 'the frame'} to {dst}, an underlay address no "
        "node holds"
        + (f"; {mac} is {owner[1].name} in {owner[0].name}, at {right}" if owner and right else ""),
        fix,
    )


def _mtu_hop(w: Walker, ns: Namespace, iface: Interface, size: int, under: Interface) -> Hop:
    need = size + OVERHEAD
    return w.hop(
        ns,
        iface,
        "vxlan-mtu",
        f"{size} bytes + {OVERHEAD} of VXLAN over {under.name}'s MTU {under.mtu}",
        f"mtu {under.name} {under.mtu}",
        "fail",
        f"a {size}-byte packet needs {need} bytes once encapsulated, more than the underlay's "
        f"MTU {under.mtu}",
        underlay_mtu_fix(w, ns, iface, under, need, size),
    )


def too_big(w: Walker, ns: Namespace, iface: Interface, pkt: Packet) -> Hop:
    """A packet routed into a vxlan device larger than its MTU: the sender's MTU
    ignores the encapsulation overhead (the usual pod MTU 1500 over a 1500 underlay)."""
    vx = iface.vxlan
    under = ns.iface(vx.link) if vx is not None else None
    sender, dev = next(((n, i) for n in w.topo.namespaces for i in n.interfaces
                        for a in i.addresses if a.address == pkt.src), (None, None))  # fmt: skip
    # room for what the sender's MTU lets it send, not only this packet (a ping's size)
    inner = max(pkt.size, dev.mtu if dev is not None else 0)
    fix = underlay_mtu_fix(w, ns, iface, under, inner + OVERHEAD, inner) if under else []
    if fix and sender is not None:  # it cached the smaller path MTU the node told it
        fix.append(w.cmd(sender, "ip route flush cache"))
    return w.hop(
        ns,
        iface,
        "vxlan-mtu",
        f"{pkt.size} bytes over {iface.name}'s MTU {iface.mtu}",
        f"mtu {iface.mtu}",
        "fail",
        f"{pkt.src or 'the sender'} sends {pkt.size}-byte packets but {iface.name} carries at "
        f"most {iface.mtu}: the sender's MTU ignores the {OVERHEAD}-byte VXLAN overhead. "
        f"Either lower the MTU of the pods' interfaces to {iface.mtu}, or raise the underlay's "
        f"to {inner + OVERHEAD} and {iface.name}'s to {inner} (the commands below)",
        fix,
    )


def underlay_mtu_fix(
    w: Walker, ns: Namespace, iface: Interface, under: Interface | None, need: int, inner: int
) -> list[str]:
    """Commands raising every underlay link on the segment to `need` bytes and the
    segment's vxlan devices to `inner` (bridges follow their ports)."""
    if under is None:
        return []
    cmds = []
    members = [w.topo.iface(k) for k in l2_domain(w.topo, under.key).members]
    for m in members:
        if m is not None and m.kind != "bridge" and m.mtu < need:
            cmds.append(w.cmd(w.ns_of(m), f"ip link set {m.name} mtu {need}"))
    lowers = {m.key for m in members if m is not None}
    for vns, dev in vteps(w.topo):
        lower = vns.iface(dev.vxlan.link) if dev.vxlan is not None else None
        if lower is not None and lower.key in lowers and dev.mtu < inner:
            cmds.append(w.cmd(vns, f"ip link set {dev.name} mtu {inner}"))
    return cmds


def _outer_walk(w: Walker, ns: Namespace, outer: Packet) -> tuple[list[Hop], End]:
    """Walk the encapsulated packet from the node's own stack; its hops, marked."""
    saved = (w.hops, w.l2_seen, list(w.forwarders), w.arp_for)
    w.hops, w.arp_for = [], None
    try:
        end = w.output(ns, outer)
        hops = w.hops
    finally:
        w.hops, w.l2_seen, w.forwarders, w.arp_for = saved
    for h in hops:
        h.decision = OUTER + h.decision
    return hops, end


def _decap(
    w: Walker, rns: Namespace, sender: Interface, vni: int, port: int, outer: Packet
) -> tuple[Interface | None, Hop]:
    """The device of `rns` that takes a VXLAN packet on `port` with `vni`."""
    listening = [d for d in rns.interfaces if d.vxlan is not None and d.vxlan.port == port]
    dev = next((d for d in listening if d.vxlan is not None and d.vxlan.vni == vni), None)
    if dev is not None and dev.admin_up:
        return dev, w.hop(
            rns,
            dev,
            "vxlan",
            f"decapsulates VNI {vni} from {outer.src}",
            f"vxlan {dev.name} id {vni}",
        )
    if dev is not None:
        return None, w.hop(
            rns,
            dev,
            "vxlan",
            f"{dev.name} is down: VNI {vni} is not taken",
            "link state DOWN",
            "fail",
            f"{dev.name} (VNI {vni}) is down",
            [w.cmd(rns, f"ip link set {dev.name} up")],
        )
    other = listening[0] if listening else None
    have = ", ".join(f"{d.name} VNI {d.vxlan.vni}" for d in listening if d.vxlan) or "none"
    return None, w.hop(
        rns,
        other,
        "vxlan-vni",
        f"no VXLAN device for VNI {vni} on udp/{port}",
        f"vxlan devices on port {port}: {have}",
        "fail",
        f"{w.ns_of(sender).name}'s {sender.name} encapsulates with VNI {vni}, but "
        f"{rns.name} decapsulates only {have} on port {port}: the packet is dropped",
        recreate(w, rns, other, vni) if other is not None else [],
    )


def recreate(w: Walker, ns: Namespace, dev: Interface, vni: int) -> list[str]:
    """Commands recreating `dev` with VNI `vni` (the kernel cannot change a VNI) and
    putting back its MAC, MTU, addresses, routes, neighbour and FDB entries."""
    vx = dev.vxlan
    if vx is None:
        return []
    link = ns.iface(vx.link)
    spec = f"ip link add {dev.name} type vxlan id {vni}"
    spec += f" local {vx.local}" if vx.local else ""
    spec += f" dev {link.name}" if link else ""
    spec += f" dstport {vx.port}" + ("" if vx.learning else " nolearning")
    cmds = [
        f"ip link del {dev.name}",
        spec,
        f"ip link set {dev.name} address {dev.mac} mtu {dev.mtu} up",
    ]
    cmds += [f"ip addr add {a.cidr} dev {dev.name}" for a in dev.addresses if a.family == 4]
    for r in ns.routes:
        if r.oif == dev.key.ifindex and r.family == 4 and r.kind == "unicast" and r.gateway:
            cmds.append(f"ip route add {r.dst} via {r.gateway} dev {dev.name} onlink")
    for n in ns.neighbours:
        if n.ifindex == dev.key.ifindex and n.state == "PERMANENT" and n.lladdr and n.family == 4:
            cmds.append(f"ip neigh add {n.address} lladdr {n.lladdr} dev {dev.name} nud permanent")
    for e in ns.fdb:
        if e.ifindex == dev.key.ifindex and e.dst:
            cmds.append(f"bridge fdb append {e.mac} dev {dev.name} dst {e.dst}")
    return [w.cmd(ns, c) for c in cmds]
