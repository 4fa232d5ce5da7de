"""Keeping a flood on a big bridge cheap: check floods the same 500-port
bridge for every container's ARP, so an ARP request flooded to a port whose
veth peer is a plain stack that cannot answer is not followed (`bystander`),
and a flood to such a port is walked once per topology and replayed
(`flood_to`). Both answers are per topology (Walker.floods, shared by a
Predictor's walks). Out of bridge.py, which is the kernel's logic; this is
only the walk's economy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vethtrace.diagnose.path import l2
from vethtrace.diagnose.path.flow import Hop
from vethtrace.diagnose.path.l2 import Dead, Frame, L2Result
from vethtrace.model import Interface, Namespace

if TYPE_CHECKING:
    from vethtrace.diagnose.path.walk import Walker


def ports(w: Walker, ns: Namespace, br: Interface) -> list[Interface]:
    """br's ports in ns's order, once per topology."""
    key = ("ports", br.key)
    got = w.floods.get(key)
    if got is None:
        got = w.floods[key] = [i for i in ns.interfaces if i.master == br.key.ifindex]
    return got


def worth_flooding(
    w: Walker, ns: Namespace, br: Interface, ingress: Interface | None, frame: Frame
) -> list[Interface]:
    """The ports an ARP request flooded by br must be walked to: every port that is
    not an obvious bystander (see `bystander`), found through indexes built once
    per bridge instead of asking each of 500 ports. Ports whose own state, flags
    or isolation decide something are always kept (their dead ends are reported).
    Other frames: every port but the ingress."""
    every = ports(w, ns, br)
    # should_deliver: never back out of the ingress port, unless it has hairpin on
    back = ingress is not None and ingress.bridge_port is not None and ingress.bridge_port.hairpin
    if w.arp_for is None or frame.pkt is not None or frame.dst_mac is not None:
        return [q for q in every if q is not ingress or back]
    key = ("split", br.key)
    split = w.floods.get(key)
    if split is None:
        order: dict[object, int] = {}
        keep: list[Interface] = []
        by_peer: dict[object, Interface] = {}
        for n, q in enumerate(every):
            order[q.key] = n
            bq = q.bridge_port
            plain = (
                q.kind == "veth" and q.peer is not None
                and (bq is None or (bq.bcast_flood and bq.state == "forwarding"
                                    and not bq.isolated))
            )  # fmt: skip
            peer = w.topo.iface(q.peer) if plain and q.peer is not None else None
            if peer is None or peer.master is not None or not peer.admin_up:
                keep.append(q)
            else:
                by_peer[peer.key] = q
        by_ns: dict[int, list[Interface]] = {}
        for pk, q in by_peer.items():
            by_ns.setdefault(pk.netns, []).append(q)  # type: ignore[attr-defined]
        split = w.floods[key] = (order, keep, by_peer, by_ns)
    order, keep, by_peer, by_ns = split
    holders, proxies = _index(w)
    chosen = {q.key: q for q in keep}
    for inode in holders.get(w.arp_for, ()):
        for q in by_ns.get(inode, ()):
            chosen[q.key] = q
    for pk in proxies.get(w.arp_for, proxies[None]):
        proxy = by_peer.get(pk)
        if proxy is not None:
            chosen[proxy.key] = proxy
    if ingress is not None and back:
        chosen[ingress.key] = ingress
    elif ingress is not None:
        chosen.pop(ingress.key, None)
    return sorted(chosen.values(), key=lambda q: order[q.key])


def _index(w: Walker) -> tuple[dict[str, set[int]], dict[str | None, set[object]]]:
    idx = w.floods.get("answerers")
    if idx is None:
        idx = w.floods["answerers"] = _answerers(w)
    return idx


def bystander(w: Walker, q: Interface, frame: Frame) -> bool:
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
        plain = memo[("plain", q.key)] = peer is not None and peer.master is None and peer.admin_up
    if not plain:
        return False
    holders, proxies = _index(w)
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


def flood_to(w: Walker, q: Interface, frame: Frame, trail: list[Hop]) -> L2Result:
    """send(w, q, frame, trail), remembered across walks for an ARP broadcast
    to a port whose veth peer is a plain stack (no bridge behind it, so the send
    learns nothing and cannot loop): check floods the same 500-port bridge for
    every container, and this keeps each flood to a copy per port."""
    peer = w.topo.iface(q.peer) if q.kind == "veth" and frame.dst_mac is None else None
    if frame.pkt is not None or peer is None or peer.master is not None:
        return l2.send(w, q, frame, trail)
    key = (q.key, frame.src_mac, frame.size)
    cached = w.floods.get(key)
    if cached is None:
        cached = w.floods[key] = l2.send(w, q, frame, [])
    return L2Result(
        [(r, trail + t) for r, t in cached.reached],
        [Dead(trail + d.hops, d.weight) for d in cached.dead],
    )
