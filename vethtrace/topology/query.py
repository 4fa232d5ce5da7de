"""Questions the other stages ask of a Topology (pure functions, no I/O).

- netns_names: the namespaces a user meant by -n (name, 'root', pid:N, inode);
- owner_of_ip / owners_of_ip: which namespace/interface holds an address;
- route_lookup: what the kernel's main table would pick for a destination
  in a namespace (longest prefix, then lowest metric);
- l2_domain: everything a frame sent out of an interface can reach without
  being routed (bridge ports, the bridge itself, veth peers, and so on);
- l2_reach: where a frame leaving an interface could be seen (ping's sniffers).
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field

from vethtrace.errors import UserError
from vethtrace.model import IfaceKey, Interface, Namespace, Route, Topology


def netns_names(topo: Topology, wanted: list[str]) -> list[str]:
    """Namespace names for what a user typed: a name, 'root', pid:N or an inode;
    UserError (one line, exit 2) for what names none."""
    names = []
    for w in wanted:
        pid = w.removeprefix("pid:").split("(")[0]
        ns = topo.netns_by_name(w) or next(
            (n for n in topo.namespaces
             if str(n.inode) == w or (pid.isdigit() and int(pid) in n.pids)),
            None,
        )
        if ns is None:
            raise UserError(f"no network namespace named {w!r} (see `ip netns list`)")
        names.append(ns.name)
    return names


def owners_of_ip(topo: Topology, ip: str) -> list[tuple[Namespace, Interface]]:
    """Every (namespace, interface) carrying address `ip` (labs often reuse
    addresses across namespaces, so there may be several). Namespaces read only
    partially (outside a -n selection) have no addresses and never match."""
    want = ipaddress.ip_address(ip)
    out = []
    for ns in topo.namespaces:
        for iface in ns.interfaces:
            for addr in iface.addresses:
                if ipaddress.ip_address(addr.address) == want:
                    out.append((ns, iface))
    return out


def owner_of_ip(
    topo: Topology, ip: str, netns: str | int | None = None
) -> tuple[Namespace, Interface] | None:
    """The first owner of `ip`, optionally only in one namespace (name or inode)."""
    for ns, iface in owners_of_ip(topo, ip):
        if netns is None or netns in (ns.name, ns.inode):
            return ns, iface
    return None


@dataclass
class RouteHit:
    """The route chosen for a destination, and where it sends the packet."""

    route: Route | None  # None for local delivery (an address of this namespace)
    oif: IfaceKey | None  # egress interface
    gateway: str | None  # next hop, None when the destination is on-link
    local: bool = False  # destination is one of the namespace's own addresses
    kind: str = "unicast"  # route type: unicast, blackhole, unreachable, prohibit, local


def _netns(topo: Topology, netns: str | int | Namespace) -> Namespace | None:
    if isinstance(netns, Namespace):
        return netns
    if isinstance(netns, int):
        return topo.netns(netns)
    return topo.netns_by_name(netns)


def route_lookup(topo: Topology, netns: str | int | Namespace, dst: str) -> RouteHit | None:
    """Longest-prefix match in the namespace's main table (then lowest metric),
    after local addresses, as the kernel does. None when nothing matches (the
    kernel answers 'Network is unreachable'). Routes through interfaces that are
    admin-down are skipped (the kernel removes them)."""
    ns = _netns(topo, netns)
    if ns is None:
        return None
    addr = ipaddress.ip_address(dst)
    for iface in ns.interfaces:
        for a in iface.addresses:
            if ipaddress.ip_address(a.address) == addr:
                return RouteHit(None, iface.key, None, local=True, kind="local")
    best: tuple[int, int, Route] | None = None
    for r in ns.routes:
        if r.family != addr.version:
            continue
        net = ipaddress.ip_network("0.0.0.0/0" if addr.version == 4 else "::/0")
        if r.dst != "default":
            net = ipaddress.ip_network(r.dst, strict=False)
        if addr not in net:
            continue
        out = ns.iface(r.oif) if r.oif is not None else None
        if out is not None and not out.admin_up:
            continue
        rank = (net.prefixlen, -r.metric)
        if best is None or rank > best[:2]:
            best = (rank[0], rank[1], r)
    if best is None:
        return None
    r = best[2]
    oif = IfaceKey(ns.inode, r.oif) if r.oif is not None else None
    return RouteHit(r, oif, r.gateway, kind=r.kind)


@dataclass
class L2Domain:
    """A broadcast domain: what an ARP request sent from `start` can reach."""

    start: IfaceKey
    members: list[IfaceKey] = field(default_factory=list)  # every interface, sorted
    bridges: list[IfaceKey] = field(default_factory=list)
    ports: list[IfaceKey] = field(default_factory=list)  # bridge ports (no IP stack of their own)
    endpoints: list[IfaceKey] = field(default_factory=list)  # where frames reach an IP stack

    def __contains__(self, key: object) -> bool:
        return key in self.members


def l2_domain(topo: Topology, key: IfaceKey) -> L2Domain:
    """Walk veth pairs and bridge membership from `key`. Bridges are endpoints
    too (their own stack receives frames addressed to them); a port's frames
    go to its bridge, never to its own stack. Interfaces that are not found
    (partial namespaces, vanished peers) end the walk."""
    dom = L2Domain(start=key)
    seen: set[IfaceKey] = set()
    todo: deque[IfaceKey] = deque([key])
    while todo:
        k = todo.popleft()
        if k in seen:
            continue
        iface = topo.iface(k)
        if iface is None:
            continue
        seen.add(k)
        ns = topo.netns(k.netns)
        assert ns is not None
        if iface.peer is not None:
            todo.append(iface.peer)
        if iface.master is not None:
            master = ns.iface(iface.master)
            if master is not None and master.kind == "bridge":
                todo.append(master.key)
        if iface.kind == "bridge":
            todo.extend(i.key for i in ns.interfaces if i.master == iface.key.ifindex)
    for k in sorted(seen):
        iface = topo.iface(k)
        assert iface is not None
        dom.members.append(k)
        if iface.kind == "bridge":
            dom.bridges.append(k)
            dom.endpoints.append(k)
        elif iface.bridge_port is not None or _enslaved_to_bridge(topo, iface):
            dom.ports.append(k)
        else:
            dom.endpoints.append(k)
    return dom


def _enslaved_to_bridge(topo: Topology, iface: Interface) -> bool:
    ns = topo.netns(iface.key.netns)
    master = ns.iface(iface.master) if ns and iface.master is not None else None
    return master is not None and master.kind == "bridge"


def l2_reach(topo: Topology, start: IfaceKey, limit: int) -> list[IfaceKey]:
    """Interfaces a frame leaving `start` can cross without routing: veth peers,
    bridge/bond masters and their ports, lower devices, transitively (breadth
    first, so the nearest come first when `limit` cuts the walk short).

    Why not l2_domain: that one answers "which stacks share this broadcast
    domain" for check and watch — bridges only, loopback included, unbounded,
    members sorted by key. Ping needs "where could our frame be seen": bonds
    and macvlan/vlan lower devices carry the frame even if no bridge is
    involved, loopback never does, and the walk order matters because only
    so many sniffers open (nearest first). Widening l2_domain would change
    check's and watch's answers, so both stay."""
    seen: list[IfaceKey] = []
    todo = [start]
    while todo and len(seen) < limit:
        key = todo.pop(0)
        if key in seen:
            continue
        it = topo.iface(key)
        if it is None or it.kind == "loopback":
            continue
        seen.append(key)
        nxt: list[IfaceKey] = []
        if it.peer is not None:
            nxt.append(it.peer)
        if it.master is not None:
            nxt.append(IfaceKey(key.netns, it.master))
        if it.link is not None:  # macvlan/ipvlan/vlan: frames leave through the lower device
            nxt.append(it.link)
        ns = topo.netns(key.netns)
        if ns is not None and it.kind in ("bridge", "bond"):
            nxt += [p.key for p in ns.interfaces if p.master == key.ifindex]
        todo += [k for k in nxt if k not in seen]
    return seen
