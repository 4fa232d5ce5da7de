"""Rules about where addresses sit: on a device whose frames an rx_handler
takes (the seed's bug), on a macvlan/ipvlan lower device, twice in one
subnet of a namespace, or twice in one L2 domain."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface

from vethtrace.diagnose.rules.base import (
    CHILD_KINDS,
    STEALING_MASTERS,
    Context,
    Where,
    finding,
    ip,
    join_names,
    move_addresses,
    rule,
)
from vethtrace.model import Finding


def _addresses_on_enslaved(ctx: Context, master_kind: str) -> Iterator[tuple[Where, Where]]:
    for w in ctx.interfaces():
        m = ctx.master(w.ns, w.iface)
        if m is None or STEALING_MASTERS.get(m.kind) != master_kind:
            continue
        if ctx.routable(w.iface):
            yield w, Where(w.ns, m)


@rule("address-on-bridge-port", "an IP address on a bridge port: the bridge takes its replies")
def address_on_bridge_port(ctx: Context) -> Iterator[Finding]:
    for port, br in _addresses_on_enslaved(ctx, "bridge"):
        p, b = port.iface.name, br.iface.name
        cidrs = join_names(a.cidr for a in ctx.routable(port.iface))
        addrs = join_names(a.address for a in ctx.routable(port.iface))
        yield finding(
            "address-on-bridge-port", "error", port,
            f"{p} in {port.ns.name} holds {cidrs} but is a port of bridge {b}",
            f"Once {p} is enslaved to {b}, the bridge's rx_handler takes every frame {p} receives "
            f"and hands it to {b}'s stack, so {p}'s own IP stack never sees the ARP replies: its "
            f"neighbour entries stay INCOMPLETE and traffic from {addrs} fails. tcpdump on {p} "
            "still shows the replies, because packet taps run before the rx_handler. The address "
            f"belongs on {b}.",
            move_addresses(ctx, port.ns, port.iface, br.iface.name, br.iface),
        )


@rule("address-on-bond-slave", "an IP address on a bond/team slave: the bond takes its frames")
def address_on_bond_slave(ctx: Context) -> Iterator[Finding]:
    for slave, bond in _addresses_on_enslaved(ctx, "bond"):
        s, b = slave.iface.name, bond.iface.name
        cidrs = join_names(a.cidr for a in ctx.routable(slave.iface))
        yield finding(
            "address-on-bond-slave", "error", slave,
            f"{s} in {slave.ns.name} holds {cidrs} but is a slave of {bond.iface.kind} {b}",
            f"A {bond.iface.kind} slave's received frames are taken by {b}'s rx_handler and "
            f"delivered as {b}'s, so replies to {cidrs} never reach {s}'s own stack (its "
            f"neighbour entries stay INCOMPLETE). Addresses of an aggregated link belong on {b}.",
            move_addresses(ctx, slave.ns, slave.iface, bond.iface.name, bond.iface),
        )


@rule("macvlan-lower-address",
      "the lower device of macvlans/ipvlans has an address in their subnet: they can't reach it")
def macvlan_lower_address(ctx: Context) -> Iterator[Finding]:
    children: dict[tuple[int, int], list[Where]] = {}
    for w in ctx.interfaces():
        if w.iface.kind in CHILD_KINDS and w.iface.link is not None:
            children.setdefault((w.iface.link.netns, w.iface.link.ifindex), []).append(w)
    for kids in children.values():
        lower = ctx.where(next(iter(kids)).iface.link)
        if lower is None or lower.iface.kind in CHILD_KINDS:
            continue
        lower_addrs = ctx.v4(lower.iface)
        affected = [
            k for k in kids
            if any(a.ip in la.network or la.ip in a.network
                   for a in ctx.v4(k.iface) for la in lower_addrs)
        ]
        if not affected:
            continue
        kind = affected[0].iface.kind.replace("tap", "vlan")
        low = lower.iface.name
        shim = f"{kind[0]}v-{low}"[:15]
        mode = "l2" if kind == "ipvlan" else "bridge"
        cidrs = join_names(a.with_prefixlen for a in lower_addrs)
        names = join_names(f"{k.iface.name} in {k.ns.name}" for k in affected)
        fix = [ip(lower.ns, "link", "add", shim, "link", low, "type", kind, "mode", mode),
               ip(lower.ns, "link", "set", shim, "up")]
        fix += move_addresses(ctx, lower.ns, lower.iface, shim)
        yield finding(
            "macvlan-lower-address", "warning", lower,
            f"{low} in {lower.ns.name} holds {cidrs} while {kind} {names} "
            f"{'sits' if len(affected) == 1 else 'sit'} on it in the same subnet",
            f"A lower device and its own {kind}s never meet: what a {kind} sends to {low}'s "
            f"address leaves through {low} onto the wire, and what {low} sends to a {kind} goes "
            f"straight out to the wire too; neither comes back in (a switch never returns a "
            f"frame out of the port it arrived on). So {low} and its {kind}s cannot reach each "
            f"other, although both reach everything else. Give the host its own {kind} on "
            f"{low} and put its address there.",
            fix,
        )


@rule("same-subnet", "one namespace with the same subnet on two interfaces")
def same_subnet(ctx: Context) -> Iterator[Finding]:
    for ns in ctx.topo.namespaces:
        candidates = []
        for iface in ns.interfaces:
            w = Where(ns, iface)
            if iface.kind == "loopback" or not iface.admin_up or ctx.is_enslaved(w):
                continue
            nets = [a for a in ctx.v4(iface) if a.network.prefixlen < 32]
            if nets:
                candidates.append((w, nets))
        for (a, a_nets), (b, b_nets) in itertools.combinations(candidates, 2):
            if _vrf(ctx, a) != _vrf(ctx, b) or _parent_child(a, b):
                continue
            overlap = [(x, y) for x in a_nets for y in b_nets if x.network.overlaps(y.network)]
            if not overlap:
                continue
            yield _same_subnet_finding(ctx, a, b, overlap[0][0], overlap[0][1])


def _vrf(ctx: Context, w: Where) -> int | None:
    m = ctx.master(w.ns, w.iface)
    return m.key.ifindex if m is not None and m.kind == "vrf" else None


def _parent_child(a: Where, b: Where) -> bool:
    """A macvlan/vlan and its own lower device: macvlan-lower-address's business."""
    return (a.iface.link == b.iface.key) or (b.iface.link == a.iface.key)


def _same_subnet_finding(
    ctx: Context, a: Where, b: Where, a_net: IPv4Interface, b_net: IPv4Interface
) -> Finding:
    ns = a.ns
    if b.iface.kind == "bridge" and a.iface.kind != "bridge":
        a, b, a_net, b_net = b, a, b_net, a_net
    if a.iface.kind == "bridge":
        # The seed's stage 2: the uplink must join the bridge, its address moves up.
        br, other = a, b
        fix = [ip(ns, "link", "set", other.iface.name, "master", br.iface.name)]
        fix += move_addresses(ctx, ns, other.iface, br.iface.name, br.iface)
        remedy = (f"Make {br.iface.name} the only interface on the subnet: enslave "
                  f"{other.iface.name} to it and move {other.iface.name}'s address to "
                  f"{br.iface.name}.")
        culprit = other
    else:
        # Neither is a bridge: one L2 segment per subnet means bridging the two links.
        name = next(n for n in (f"br{i}" for i in range(100)) if ns.iface_by_name(n) is None)
        fix = [ip(ns, "link", "add", name, "type", "bridge"), ip(ns, "link", "set", name, "up")]
        for w in (a, b):
            fix.append(ip(ns, "link", "set", w.iface.name, "master", name))
        for w in (a, b):
            fix += move_addresses(ctx, ns, w.iface, name)
        remedy = (f"Either renumber one side, or bridge {a.iface.name} and {b.iface.name} into "
                  f"one segment ({name}) and put both addresses on the bridge.")
        culprit = b
    first = ctx.lookup(ns, a_net.network.network_address + 1)
    via = ns.iface(first.oif) if first is not None else None
    winner = a if via is None or via.key == a.iface.key else b
    loser = b if winner is a else a
    net = a_net.network if a_net.network.prefixlen <= b_net.network.prefixlen else b_net.network
    gateways = {r.gateway: r.dst for r in ns.routes if r.gateway}
    victims = []
    for k in ctx.neighbours(loser):
        for addr in ctx.v4(k.iface):
            if addr.ip in net:
                dst = gateways.get(str(addr.ip))
                role = ("the default gateway" if dst == "default" else
                        f"gateway for {dst}" if dst else k.ns.name)
                victims.append(f"{addr.ip} ({role})")
    same_l2 = ctx.domain_id(a.iface.key) == ctx.domain_id(b.iface.key)
    if victims and not same_l2:
        effect = (f"so {join_names(victims[:3])}, behind {loser.iface.name}, "
                  f"{'is' if len(victims) == 1 else 'are'} ARPed for on {winner.iface.name} "
                  f"and unreachable")
    else:
        effect = (f"so hosts behind {loser.iface.name} are ARPed for on "
                  f"{winner.iface.name}")
    return finding(
        "same-subnet", "error" if victims and not same_l2 else "warning", culprit,
        f"{ns.name} has {net} on both {a.iface.name} ({a_net.with_prefixlen}) and "
        f"{b.iface.name} ({b_net.with_prefixlen})",
        f"The kernel uses one connected route for the whole subnet: every address in {net} "
        f"is sent through {winner.iface.name}, {effect}; and since Linux answers ARP for any "
        f"local address on any interface, neighbours' caches can flap between two MACs. "
        f"{remedy}",
        fix,
    )


@rule("duplicate-address", "the same IPv4 address on two interfaces of one L2 domain")
def duplicate_address(ctx: Context) -> Iterator[Finding]:
    holders: dict[tuple[int, IPv4Address], list[tuple[Where, IPv4Interface]]] = {}
    for w in ctx.interfaces():
        if w.iface.kind == "loopback" or not w.iface.admin_up:
            continue
        for a in ctx.v4(w.iface):
            holders.setdefault((ctx.domain_id(w.iface.key), a.ip), []).append((w, a))
    gateways = {r.gateway for ns in ctx.topo.namespaces for r in ns.routes if r.gateway}
    for (_, address), held in holders.items():
        # A port and its own bridge holding it is address-on-bridge-port's finding.
        held = [h for h in held if not ctx.is_enslaved(h[0])]
        if len(held) < 2:
            continue
        held.sort(key=lambda h: (str(address) not in gateways, h[0].iface.kind != "bridge",
                                 h[0].ns.name, h[0].iface.name))
        keeper = held[0][0]
        used = {a.ip for w in ctx.interfaces() for a in ctx.v4(w.iface)}
        for w, a in held[1:]:
            free = next((h for h in a.network.hosts() if h not in used), None)
            fix = [ip(w.ns, "addr", "del", a.with_prefixlen, "dev", w.iface.name)]
            if free is not None:
                used.add(free)
                fix.append(ip(w.ns, "addr", "add", f"{free}/{a.network.prefixlen}",
                              "dev", w.iface.name))
            yield finding(
                "duplicate-address", "error", w,
                f"{address} is on both {keeper.label} and {w.label}, in one L2 domain",
                f"IPv4 has no duplicate detection by default: both stacks answer ARP for "
                f"{address}, so each neighbour caches whichever reply came last and its traffic "
                f"lands on one of the two at random, flapping as caches refresh. Give {w.label} "
                f"an address of its own"
                + (f" (e.g. {free}, unused in this topology)." if free else "."),
                fix,
            )
