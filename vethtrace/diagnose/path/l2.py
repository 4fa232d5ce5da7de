"""Layer 2: a frame leaving an interface, across veth pairs (carrier, the
peer's state and MTU), macvlans and bridges, to the IP stacks that receive it.

`send` is a device transmitting, `receive` a device receiving: a bridge port
hands the frame to its bridge (bridge.py), a macvlan's lower device to its
children (macvlan.py), a plain device to its own stack if the MAC is its own.

A broadcast or a flood branches: `send` returns every stack reached
(`reached`) and every branch that died (`Dead`, with how much it matters:
a flooded frame that other hosts ignore is expected, a port that is down is
not), so the caller can name the decision on the branch that mattered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vethtrace.diagnose.path.flow import Hop, Packet
from vethtrace.model import Interface

if TYPE_CHECKING:
    from vethtrace.diagnose.path.walk import Walker


VLAN_HLEN = 4  # is_skb_forwardable's slack over a device's MTU


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


def dead_end(trail: list[Hop], hop: Hop, weight: int = 1) -> L2Result:
    """A branch that ends at `hop`: the frame goes no further there."""
    return L2Result(dead=[Dead([*trail, hop], weight)])


def send(w: Walker, iface: Interface, frame: Frame, trail: list[Hop]) -> L2Result:
    """`iface` transmits `frame` (its own stack sends, or a bridge forwards to it)."""
    from vethtrace.diagnose.path import bridge, macvlan  # they build on this module

    ns = w.ns_of(iface)
    out = L2Result()
    if not iface.admin_up:
        return dead_end(
            trail,
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
        )
    if iface.kind == "bridge":
        return bridge.bridge_forward(w, iface, None, frame, trail)
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
    if iface.kind in ("macvlan", "macvtap"):
        return macvlan.send(w, iface, frame, trail)
    if iface.kind == "vxlan":  # encapsulation: the outer packet walks the underlay
        from vethtrace.diagnose.path import vxlan

        return vxlan.send(w, iface, frame, trail)
    if iface.kind != "veth":
        return dead_end(
            trail,
            w.hop(
                ns,
                iface,
                "l2",
                f"leaves through a {iface.kind} device",
                f"kind {iface.kind}",
                "unknown",
                f"frames leaving a {iface.kind} device are not modelled",
            ),
        )
    peer = w.topo.iface(iface.peer)
    if peer is None:
        return dead_end(
            trail,
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
        )
    pns = w.ns_of(peer)
    if not peer.admin_up or not iface.carrier:
        hop = w.hop(
            ns,
            iface,
            "veth",
            f"no carrier: peer {pns.name}/{peer.name} is down",
            f"link {pns.name}/{peer.name} state DOWN",
            "fail",
            f"{peer.name}, the other end of {iface.name}, is down, so "
            f"{iface.name} has no carrier and veth_xmit drops every frame",
            [w.cmd(pns, f"ip link set {peer.name} up")],
        )
        if not peer.admin_up:
            hop.blame = (pns.name, peer.name)  # the end that is down decides
        return dead_end(trail, hop)
    if frame.size > peer.mtu + VLAN_HLEN:  # is_skb_forwardable: mtu + header + VLAN_HLEN
        return dead_end(
            trail,
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
        )
    hop = w.hop(
        ns, iface, "veth", f"crosses to {pns.name}/{peer.name}", f"veth peer {pns.name}/{peer.name}"
    )
    return receive(w, peer, frame, [*trail, hop])


def receive(w: Walker, iface: Interface, frame: Frame, trail: list[Hop]) -> L2Result:
    from vethtrace.diagnose.path import bridge, macvlan  # they build on this module

    out = L2Result()
    if (iface.key, frame.dst_mac) in w.l2_seen:
        return out
    w.l2_seen.add((iface.key, frame.dst_mac))
    ns = w.ns_of(iface)
    master = ns.iface(iface.master) if iface.master is not None else None
    if master is None and iface.kind not in ("macvlan", "macvtap"):
        taken = macvlan.receive(w, iface, frame, trail)
        if taken is not None:
            return taken
    if master is not None:
        if master.kind == "bridge":
            return bridge.bridge_input(w, master, iface, frame, trail)
        return dead_end(
            trail,
            w.hop(
                ns,
                iface,
                "l2",
                f"enslaved to {master.kind} {master.name}",
                f"master {master.name}",
                "unknown",
                f"frames arriving at a {master.kind} slave are not modelled",
            ),
        )
    if frame.dst_mac is None or frame.dst_mac == iface.mac:
        out.reached.append((iface, trail))
        return out
    return dead_end(
        trail,
        w.hop(
            ns,
            iface,
            "l2",
            f"frame for {frame.dst_mac} is not for {iface.name} ({iface.mac})",
            "",
            "fail",
            "the destination MAC is not this interface's: dropped as PACKET_OTHERHOST",
        ),
        0,
    )
