"""Rules about the IP layer between namespaces: a missing route to what sits
behind an on-link router, a router that does not forward, and strict
reverse-path filtering against asymmetric routes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from vethtrace.diagnose.rules.base import Context, Where, finding, ip, join_names, rule, sysctl_w
from vethtrace.model import Finding, Namespace


@dataclass
class Router:
    """A namespace on `where`'s link that forwards, and what lies behind it."""

    iface: Where  # the router's interface on the link
    gateway: IPv4Address  # its address in the link's subnet
    behind: dict[IPv4Address, IPv4Network]  # hosts of other namespaces -> subnet they are in


def up_interfaces(ctx: Context, ns: Namespace) -> list[Where]:
    return ctx.up_interfaces(ns)


def hosts_behind(ctx: Context, router: Where, exclude: set[int]) -> dict[IPv4Address, IPv4Network]:
    """Addresses of other namespaces in the router's connected subnets on its
    *other* links: the peers only reachable through it."""
    found: dict[IPv4Address, IPv4Network] = {}
    link_domain = ctx.domain_id(router.iface.key)
    for w in up_interfaces(ctx, router.ns):
        if ctx.domain_id(w.iface.key) == link_domain:
            continue
        for net in {a.network for a in ctx.v4(w.iface) if a.network.prefixlen < 32}:
            for other in ctx.interfaces():
                if other.ns.inode in exclude | {router.ns.inode}:
                    continue
                for a in ctx.v4(other.iface):
                    if a.ip in net:
                        found[a.ip] = net
    return found


def routers_on(ctx: Context, w: Where) -> list[Router]:
    mine = ctx.v4(w.iface)
    out = []
    for k in ctx.neighbours(w):
        if ctx.forwarding(k.ns) is not True:
            continue
        gw = next((a.ip for a in ctx.v4(k.iface) if any(a.ip in m.network for m in mine)), None)
        if gw is None:
            continue
        behind = hosts_behind(ctx, k, {w.ns.inode})
        if behind:
            out.append(Router(k, gw, behind))
    return out


@rule("missing-route", "no route to peers that are only reachable through an on-link router")
def missing_route(ctx: Context) -> Iterator[Finding]:
    for ns in ctx.topo.namespaces:
        if ctx.has_default(ns):
            continue
        for w in up_interfaces(ctx, ns):
            if not ctx.v4(w.iface):
                continue
            for router in routers_on(ctx, w):
                lost = {h: n for h, n in router.behind.items() if ctx.lookup(ns, h) is None}
                if not lost or _reached_anyway(ctx, ns, w, lost):
                    continue
                nets = join_names(sorted({str(n) for n in lost.values()}))
                r = router.iface
                yield finding(
                    "missing-route", "error", w,
                    f"{ns.name} has no route to {nets}, reachable only through "
                    f"{r.ns.name} ({router.gateway} on {w.iface.name})",
                    f"Without a matching route (and no default route) the kernel refuses to "
                    f"send: 'Network is unreachable' for {ns.name}'s own traffic, and replies to "
                    f"anyone in {nets} are never sent, so pings from there time out. "
                    f"{r.ns.name} forwards and is on {w.iface.name}'s link: route through it.",
                    [ip(ns, "route", "add", "default", "via", router.gateway, "dev", w.iface.name)],
                )
                break
            else:
                continue
            break


def _reached_anyway(
    ctx: Context, ns: Namespace, w: Where, lost: dict[IPv4Address, IPv4Network]
) -> bool:
    """Does the path model say a host behind the router reaches ns all the same
    (the router masquerades, so ns never sees the unroutable source), or that
    the decision that broke is the router's (it forwards out of its uplink, the
    interface of its default route, without masquerading: ns is its upstream,
    not meant to route its pods; paths.py's missing-masquerade names that), or
    that the request is lost before ns (so the model cannot judge the reply yet)?"""
    from vethtrace.diagnose.path import Flow

    mine = next((str(a.ip) for a in ctx.v4(w.iface)), None)
    host = next(iter(lost))
    owner = ctx.owner_of(host, ctx.interfaces())
    if mine is None or owner is None:
        return False
    try:
        pred = ctx.predictor.predict(Flow(owner.ns.name, mine))
    except Exception:  # the model tripping must not hide a static finding
        return False
    hop = pred.first_failure
    if pred.ok or hop is None:
        return pred.ok
    if hop.blame is not None and hop.netns == ns.name:
        return True
    # lost on the way there (a forward drop in the router): whether ns needs the
    # route depends on what the router does after (masquerade or not); the path
    # rules name that drop, and the next check judges the rest
    return hop.netns != ns.name and any(h is hop for h in pred.forward)


@rule("forwarding-disabled", "a namespace other namespaces route through does not forward")
def forwarding_disabled(ctx: Context) -> Iterator[Finding]:
    # router namespace inode -> [(its interface, user namespace, route)]
    users: dict[int, list[tuple[Where, Namespace, str]]] = {}
    for ns in ctx.topo.namespaces:
        for route in ns.routes:
            if route.family != 4 or not route.gateway or route.oif is None:
                continue
            oif = ns.iface(route.oif)
            if oif is None:
                continue
            router = ctx.owner_of(IPv4Address(route.gateway), ctx.neighbours(Where(ns, oif)))
            if router is None or len([w for w in up_interfaces(ctx, router.ns)
                                      if ctx.v4(w.iface)]) < 2:
                continue  # a gateway with nowhere else to go is not routing
            desc = f"{ns.name} ({route.dst} via {route.gateway})"
            users.setdefault(router.ns.inode, []).append((router, ns, desc))
    for uses in users.values():
        router_ns = uses[0][0].ns
        who = join_names(dict.fromkeys(d for _, _, d in uses))
        if ctx.forwarding(router_ns) is False:
            first = uses[0][0]
            yield finding(
                "forwarding-disabled", "error", first,
                f"{router_ns.name} is the gateway on {first.iface.name} for {who}, but its "
                f"IPv4 forwarding is off",
                f"With net.ipv4.ip_forward=0 the kernel delivers packets addressed to "
                f"{router_ns.name} itself but drops every packet it would have to route on to "
                f"another interface, silently (drop reason IP_INADDRERRORS, no ICMP error): "
                f"its neighbours reach "
                f"{router_ns.name}, never what lies behind it.",
                [sysctl_w(router_ns, "net.ipv4.ip_forward", 1)],
            )
            continue
        ifaces = {r.iface.key: r for r, _, _ in uses}
        for key, w in ifaces.items():
            _all, dev = ctx.conf(router_ns, w.iface, "forwarding")
            if dev != 0 or not ctx.forwarding(router_ns):
                continue
            r = w.iface.name
            mine = join_names(dict.fromkeys(d for x, _, d in uses if x.iface.key == key))
            yield finding(
                "forwarding-disabled", "error", w,
                f"{r} in {router_ns.name} has forwarding=0, yet it is the gateway for {mine}",
                f"ip_forward is on in {router_ns.name}, but forwarding is decided per receiving "
                f"interface: with net.ipv4.conf.{r}.forwarding=0, packets that arrive on {r} "
                f"are never routed on.",
                [sysctl_w(router_ns, f"net.ipv4.conf.{r}.forwarding", 1)],
            )


@rule("rp-filter-strict", "strict rp_filter drops traffic whose route back leaves another way")
def rp_filter_strict(ctx: Context) -> Iterator[Finding]:
    for ns in ctx.topo.namespaces:
        for w in up_interfaces(ctx, ns):
            all_v, dev_v = ctx.conf(ns, w.iface, "rp_filter")
            if max(all_v or 0, dev_v or 0) != 1:
                continue
            bad = list(_asymmetric_sources(ctx, w))
            if not bad:
                continue
            i = w.iface.name
            fix = []
            for net, via in dict.fromkeys((n, g) for _, n, g, _ in bad):
                fix.append(ip(ns, "route", "add", net, *(("via", via) if via else ()), "dev", i))
            shown = join_names(
                f"{s} (route back via {back})" for s, _, _, back in bad[:3])
            yield finding(
                "rp-filter-strict", "warning", w,
                f"strict rp_filter on {i} in {ns.name} drops packets from {shown}",
                f"With rp_filter=1 the kernel accepts a packet on {i} only if its route back to "
                f"the source leaves through {i} too; otherwise it drops it (drop reason "
                f"IP_RPFILTER; ARP requests from such sources go unanswered too). Make the route "
                f"symmetric as below, or, if the asymmetry is intended, use loose mode "
                f"(rp_filter=2 on conf.all and conf.{i}).",
                fix,
            )


def _asymmetric_sources(
    ctx: Context, w: Where
) -> Iterator[tuple[IPv4Address, IPv4Network, IPv4Address | None, str]]:
    """(source, subnet to route, gateway on w's link, where the route back goes)."""
    mine = ctx.v4(w.iface)
    seen: set[IPv4Address] = set()
    for k in ctx.neighbours(w):
        gw = next((a.ip for a in ctx.v4(k.iface) if any(a.ip in m.network for m in mine)), None)
        sources: dict[IPv4Address, IPv4Network] = {
            a.ip: (a.network if gw is None else IPv4Network(f"{a.ip}/32"))
            for a in ctx.v4(k.iface)
        }
        if ctx.forwarding(k.ns):
            sources.update(hosts_behind(ctx, k, {w.ns.inode}))
        for src, net in sources.items():
            if src in seen:
                continue
            seen.add(src)
            back = ctx.lookup(w.ns, src)
            if back is not None and back.oif == w.iface.key.ifindex:
                continue
            via = w.ns.iface(back.oif) if back is not None else None
            yield src, net, gw, (via.name if via else "nowhere: no route")
