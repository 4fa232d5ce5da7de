"""Rules about links themselves: ends that are down, peers that are gone,
carriers that are off, MTUs that disagree, loopback down."""

from __future__ import annotations

from collections.abc import Iterator

from vethtrace.diagnose.rules.base import Context, Where, finding, ip, join_names, rule
from vethtrace.model import Finding, Severity

# Kinds whose MTU we may raise freely (software devices); a physical NIC's
# smaller MTU is usually the network's and the others must come down to it.
SOFT_KINDS = {"veth", "bridge", "dummy", "bond", "team", "macvlan", "ipvlan", "vlan", "tap", "tun"}


def _expects_traffic(ctx: Context, w: Where) -> bool:
    """Traffic is expected where there are addresses or an up master to feed."""
    if ctx.routable(w.iface):
        return True
    m = ctx.master(w.ns, w.iface)
    return m is not None and m.admin_up


def _veth_pair(ctx: Context, w: Where) -> Where | None:
    return ctx.where(w.iface.peer) if w.iface.kind == "veth" else None


@rule("veth-peer-down", "one end of a veth pair is down, so the other has no carrier")
def veth_peer_down(ctx: Context) -> Iterator[Finding]:
    for w in ctx.interfaces():
        peer = _veth_pair(ctx, w)
        if peer is None or w.iface.admin_up or not peer.iface.admin_up:
            continue
        if not (_expects_traffic(ctx, w) or _expects_traffic(ctx, peer)):
            continue
        lost = _flushed_default(ctx, w)
        yield finding(
            "veth-peer-down", "error", w,
            f"{w.label} is down, so its veth peer {peer.label} has no carrier",
            f"A veth pair is one cable: while {w.iface.name} is down, {peer.iface.name} reports "
            f"NO-CARRIER and the kernel drops everything queued to it (QDISC_DROP), ARP "
            f"included, so nothing crosses the pair in either direction."
            + (f" Setting {w.iface.name} down also made the kernel delete the routes through "
               f"it, so bringing it up restores only its connected routes: the default route "
               f"through the router on its link has to be added again." if lost else ""),
            [ip(w.ns, "link", "set", w.iface.name, "up"), *lost],
        )


def _flushed_default(ctx: Context, w: Where) -> list[str]:
    """The default route to add back after bringing w up: the kernel deletes the
    IPv4 routes through a device set down (carrier loss only marks them linkdown),
    so a namespace whose only link was set down has lost its way out. Proposed only
    when w is its only link and a forwarding router with hosts behind it sits on
    w's subnet (what `missing-route` would ask for once w is up)."""
    from vethtrace.diagnose.rules.routing import routers_on

    others = [o for o in ctx.up_interfaces(w.ns) if o.iface.key != w.iface.key]
    if others or not ctx.v4(w.iface) or ctx.has_default(w.ns):
        return []
    routers = routers_on(ctx, w)
    if len(routers) != 1:
        return []  # none, or a choice only the user can make
    return [ip(w.ns, "route", "add", "default", "via", routers[0].gateway, "dev", w.iface.name)]


@rule("orphan-veth", "a veth whose peer, or the peer's namespace, is gone or out of sight")
def orphan_veth(ctx: Context) -> Iterator[Finding]:
    for w in ctx.interfaces():
        i = w.iface
        if i.kind != "veth" or i.peer_state is None:
            continue
        if i.peer_state == "unknown":
            # Alive in a namespace we cannot open (a container we may not
            # enter) is normal; dead air on top of that is not.
            if i.carrier or not _expects_traffic(ctx, w):
                continue
            gone = ("its peer is in a namespace no name or process holds (a leaked namespace "
                    "kept alive by a bind mount or an open fd), and it is down")
        elif i.peer_state == "netns-gone":
            gone = "its peer's namespace is gone"
        else:
            gone = "its peer no longer exists"
        yield finding(
            "orphan-veth", "warning", w,
            f"{w.label} is a veth whose other end is unreachable: {gone}",
            f"Nothing {i.name} sends can arrive anywhere and it has no carrier. Deleting a "
            f"namespace normally destroys both ends of its veths; a leftover end means the "
            f"peer's namespace is still held open somewhere vethtrace cannot see, or the pair "
            f"was half set up. Deleting {i.name} removes both ends; then re-create the pair.",
            [ip(w.ns, "link", "del", i.name)],
        )


@rule("interface-down", "an interface with addresses, or a bridge port, is administratively down")
def interface_down(ctx: Context) -> Iterator[Finding]:
    for w in ctx.interfaces():
        i = w.iface
        if i.admin_up or i.kind in ("loopback", "bridge") or i.name == "lo":
            continue
        peer = _veth_pair(ctx, w)
        if peer is not None and peer.iface.admin_up:
            continue  # veth-peer-down says it better
        if not _expects_traffic(ctx, w):
            continue
        if peer is not None and _expects_traffic(ctx, peer) and _reported_first(ctx, peer, w):
            continue  # both ends down: one finding for the pair, on the end named first
        m = ctx.master(w.ns, i)
        role = f"a port of {m.name}" if m is not None else "holds " + join_names(
            a.cidr for a in ctx.routable(i))
        fix = [ip(w.ns, "link", "set", i.name, "up")]
        head = f"{w.label} is down but {role}"
        if peer is not None:
            fix.append(ip(peer.ns, "link", "set", peer.iface.name, "up"))
            head += f"; its veth peer {peer.label} is down too"
        effect = ("the bridge treats the port as disabled" if m is not None
                  else "its addresses are unreachable")
        # A port or a veth end is someone's link; a lone NIC with an address
        # may be down on purpose.
        severity: Severity = "error" if m is not None or peer is not None else "warning"
        yield finding(
            "interface-down", severity, w, head,
            f"An administratively down interface neither sends nor receives; its connected "
            f"routes are gone and {effect}."
            + (" A veth pair carries traffic only while both ends are up." if peer else ""),
            fix,
        )


def _reported_first(ctx: Context, a: Where, b: Where) -> bool:
    """Of two ends that both qualify, the one with addresses speaks for the pair."""
    rank_a = (not ctx.routable(a.iface), a.ns.name, a.iface.name)
    rank_b = (not ctx.routable(b.iface), b.ns.name, b.iface.name)
    return rank_a < rank_b


@rule("no-carrier", "an up interface that should carry traffic has no carrier")
def no_carrier(ctx: Context) -> Iterator[Finding]:
    for w in ctx.interfaces():
        i = w.iface
        if not i.admin_up or i.carrier or i.kind in ("loopback", "bridge") or i.name == "lo":
            continue
        peer = _veth_pair(ctx, w)
        if peer is not None and not peer.iface.admin_up:
            continue  # veth-peer-down names the end to bring up
        if i.kind == "veth" and i.peer_state is not None:
            continue  # orphan-veth
        if not _expects_traffic(ctx, w):
            continue
        fix: list[str] = []
        lower = ctx.where(i.link)
        if i.kind in ("bond", "team"):
            why = f"{i.name} has no active slave (none enslaved, or all without carrier)"
        elif lower is not None:
            why = f"its lower device {lower.label} is down or without carrier"
            if not lower.iface.admin_up:
                fix = [ip(lower.ns, "link", "set", lower.iface.name, "up")]
        else:
            why = "the link is unplugged or the device or process behind it is gone"
        yield finding(
            "no-carrier", "warning", w,
            f"{w.label} is up but has no carrier",
            f"Without carrier the kernel marks {i.name}'s routes linkdown and drops what is "
            f"queued to it; {why}.",
            fix,
        )


@rule("bridge-down", "a bridge with ports or addresses is administratively down")
def bridge_down(ctx: Context) -> Iterator[Finding]:
    for w in ctx.interfaces():
        if w.iface.kind != "bridge" or w.iface.admin_up:
            continue
        ports = ctx.ports(w.ns, w.iface)
        if not ports and not ctx.routable(w.iface):
            continue
        b = w.iface.name
        yield finding(
            "bridge-down", "error", w,
            f"bridge {b} in {w.ns.name} is down"
            + (f" with ports {join_names(p.name for p in ports)}" if ports else ""),
            f"While {b} is down every port sits in the disabled state: the bridge's rx_handler "
            f"drops whatever the ports receive, nothing is forwarded between them and {b}'s own "
            f"addresses are unreachable.",
            [ip(w.ns, "link", "set", b, "up")],
        )


@rule("loopback-down", "lo is down: the namespace cannot talk to itself")
def loopback_down(ctx: Context) -> Iterator[Finding]:
    for ns in ctx.topo.namespaces:
        lo = ns.iface_by_name("lo")
        if lo is None or lo.admin_up:
            continue
        if not any(ctx.routable(i) for i in ns.interfaces if i is not lo):
            continue  # an empty namespace: nothing to talk to anyway
        yield finding(
            "loopback-down", "info", Where(ns, lo),
            f"lo is down in {ns.name}",
            f"Every packet a namespace sends to one of its own addresses (127.0.0.1 and the "
            f"interfaces' addresses alike) is delivered through lo, so with lo down anything in "
            f"{ns.name} that talks to itself fails; traffic from outside is not affected.",
            [ip(ns, "link", "set", "lo", "up")],
        )


@rule("mtu-mismatch", "MTUs differ across a veth pair or among a bridge's ports")
def mtu_mismatch(ctx: Context) -> Iterator[Finding]:
    seen: set[tuple[int, int]] = set()
    groups: list[tuple[str, list[Where]]] = []
    for w in ctx.interfaces():
        peer = _veth_pair(ctx, w)
        if peer is not None and w.iface.key < peer.iface.key:
            groups.append(("veth pair", [w, peer]))
        if w.iface.kind in ("bridge", "openvswitch"):
            ports = [Where(w.ns, p) for p in ctx.ports(w.ns, w.iface)]
            if len(ports) >= 2:
                groups.append((f"bridge {w.iface.name}", ports))
            if ports and w.iface.mtu > min(p.iface.mtu for p in ports):
                yield _bridge_above_ports(w, ports)
    for what, members in groups:
        mtus = {m.iface.mtu for m in members}
        if len(mtus) < 2:
            continue
        smallest = [m for m in members if m.iface.mtu == min(mtus)]
        hard = any(m.iface.kind not in SOFT_KINDS for m in smallest)
        target = min(mtus) if hard else max(mtus)
        for m in members:
            if m.iface.mtu == target or (m.ns.inode, m.iface.key.ifindex) in seen:
                continue
            seen.add((m.ns.inode, m.iface.key.ifindex))
            others = [o for o in members if o is not m]
            fix = [ip(m.ns, "link", "set", m.iface.name, "mtu", target)]
            peer = _veth_pair(ctx, m)
            if peer is not None and peer not in members and peer.iface.mtu != target:
                fix.append(ip(peer.ns, "link", "set", peer.iface.name, "mtu", target))
            big = max(members, key=lambda x: x.iface.mtu)
            yield finding(
                "mtu-mismatch", "warning", m,
                f"{m.label} has MTU {m.iface.mtu} but "
                + join_names(f"{o.label} has {o.iface.mtu}" for o in others)
                + f" ({what})",
                f"Small packets pass, so ping works, but frames of {min(mtus) + 1} to "
                f"{big.iface.mtu} bytes (allowed on {big.iface.name}) are dropped silently where "
                f"they cross to the smaller side: a veth, like a bridge port, checks the receiving "
                f"device's MTU and no ICMP 'fragmentation needed' comes back, so large transfers "
                f"stall. Make the MTUs equal.",
                fix,
            )


def _bridge_above_ports(br: Where, ports: list[Where]) -> Finding:
    low = min(p.iface.mtu for p in ports)
    small = join_names(p.iface.name for p in ports if p.iface.mtu == low)
    b = br.iface.name
    return finding(
        "mtu-mismatch", "warning", br,
        f"bridge {b} in {br.ns.name} has MTU {br.iface.mtu}, larger than its port {small} ({low})",
        f"A bridge normally takes the smallest MTU of its ports; {b}'s was raised by hand, so "
        f"packets {br.ns.name} sends through {b} larger than {low} bytes are dropped where they "
        f"leave through {small} (no ICMP 'fragmentation needed' comes back).",
        [ip(br.ns, "link", "set", b, "mtu", low)],
    )
