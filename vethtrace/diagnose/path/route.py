"""Routing decisions as fib_lookup makes them: policy rules in priority order,
each consulting a table (longest prefix, then lowest metric), local table
first by default; unreachable/blackhole/prohibit routes and rule actions;
source address selection; and the per-device sysctls the kernel combines
with `all` (inetdevice.h: MAX for rp_filter and arp_*, OR for proxy_arp,
arp_filter, accept_local, route_localnet; forwarding is the device's own).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from vethtrace.model import Address, Interface, Namespace, Route, Rule

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
TABLE_NAMES = {255: "local", 254: "main", 253: "default"}
DEFAULT_RULES = [Rule(0, table=255), Rule(32766, table=254), Rule(32767, table=253)]
_MAX = {"rp_filter", "arp_ignore", "arp_announce", "arp_accept"}
_OR = {"proxy_arp", "arp_filter", "accept_local", "route_localnet"}


@lru_cache(maxsize=65536)
def net(cidr: str, family: int = 4) -> IPNet:
    if cidr == "default":
        return ipaddress.ip_network("0.0.0.0/0" if family == 4 else "::/0")
    return ipaddress.ip_network(cidr, strict=False)


@lru_cache(maxsize=65536)
def ip(text: str) -> IPAddr:
    return ipaddress.ip_address(text)


def conf(ns: Namespace, iface: Interface | None, name: str) -> int:
    """The value the kernel acts on for net.ipv4.conf.<iface>.<name>."""
    dev = int(iface.sysctls.get(name, "0")) if iface is not None else 0
    if name == "forwarding":
        if iface is None or name not in iface.sysctls:
            return int(ns.sysctls.get("net.ipv4.ip_forward", "0"))
        return dev
    every = int(ns.sysctls.get(f"net.ipv4.conf.all.{name}", "0"))
    if name in _MAX:
        return max(every, dev)
    if name in _OR:
        return int(bool(every or dev))
    return dev


def conf_source(iface: Interface | None, name: str) -> str:
    dev = iface.name if iface is not None else "all"
    if name in _MAX or name in _OR:
        return f"sysctl net.ipv4.conf.{{all,{dev}}}.{name}"
    return f"sysctl net.ipv4.conf.{dev}.{name}"


@dataclass
class RouteResult:
    kind: str  # unicast, local, broadcast, blackhole, unreachable, prohibit, none
    route: Route | None = None
    oif: Interface | None = None
    gateway: str | None = None
    table: int = 254
    rule: Rule | None = None

    def describe(self) -> str:
        if self.route is None:
            where = f" (rule {self.rule.priority})" if self.rule and self.kind != "none" else ""
            return f"no route{where}"
        r = self.route
        text = r.dst if r.kind in ("unicast", "local", "broadcast") else f"{r.kind} {r.dst}"
        if r.kind in ("local", "broadcast") and not text.startswith(r.kind):
            text = f"{r.kind} {text}"
        if r.gateway:
            text += f" via {r.gateway}"
        if self.oif is not None:
            text += f" dev {self.oif.name}"
        if r.prefsrc:
            text += f" src {r.prefsrc}"
        if r.metric:
            text += f" metric {r.metric}"
        text += f" table {TABLE_NAMES.get(self.table, self.table)}"
        if self.rule is not None and self.rule.priority not in (0, 32766, 32767):
            text += f" (rule {self.rule.priority})"
        return text


def tables(ns: Namespace) -> dict[int, list[Route]]:
    out: dict[int, list[Route]] = {}
    for r in (*ns.routes, *ns.other_routes):
        out.setdefault(r.table, []).append(r)
    if 255 not in out:  # an older snapshot: the local table follows from the addresses
        for iface in ns.interfaces:
            for a in iface.addresses:
                plen = 32 if a.family == 4 else 128
                local = Route(
                    f"{a.address}/{plen}",
                    iface.key.ifindex,
                    None,
                    a.address,
                    a.family,
                    "host",
                    255,
                    "local",
                )
                out.setdefault(255, []).append(local)
        # and so do its connected routes (a hand-built or recorded topology without them)
        main = out.setdefault(254, [])
        for iface in ns.interfaces:
            if not iface.admin_up:
                continue
            for a in iface.addresses:
                plen = 32 if a.family == 4 else 128
                if a.prefixlen >= plen or iface.kind == "loopback":
                    continue
                cidr = str(net(a.cidr, a.family))
                if not any(r.dst == cidr and r.oif == iface.key.ifindex for r in main):
                    main.append(
                        Route(cidr, iface.key.ifindex, None, a.address, a.family, "link", 254)
                    )
    return out


def _rule_matches(
    rule: Rule,
    dst: IPAddr,
    src: str | None,
    iif: str,
    proto: str,
    sport: int | None,
    dport: int | None,
    mark: int,
) -> bool:
    ok = True
    if rule.src and (src is None or ip(src) not in net(rule.src, rule.family)):
        ok = False
    if ok and rule.dst and dst not in net(rule.dst, rule.family):
        ok = False
    if ok and rule.iif and rule.iif != iif:
        ok = False
    if ok and rule.oif:
        ok = False  # only sockets bound to a device set an output interface
    if ok and rule.fwmark is not None:
        ok = (mark & (rule.fwmask if rule.fwmask is not None else 0xFFFFFFFF)) == rule.fwmark
    if ok and rule.ip_proto is not None:
        ok = {1: "icmp", 6: "tcp", 17: "udp"}.get(rule.ip_proto) == proto
    if ok and rule.sport is not None:
        ok = sport is not None and rule.sport[0] <= sport <= rule.sport[1]
    if ok and rule.dport is not None:
        ok = dport is not None and rule.dport[0] <= dport <= rule.dport[1]
    if ok and (rule.l3mdev or rule.uid_range is not None):
        ok = rule.uid_range is not None and rule.uid_range[0] == 0  # root's sockets
    return ok != rule.invert


Compiled = tuple[tuple[int, int, int, int, Route], ...]  # family, net, mask, rank, route


def _compile(routes: list[Route], family: int) -> Compiled:
    """A table's routes of one family as integers (network, mask, prefix length and
    metric as one rank), so that the thousands of lookups check makes compare ints,
    not ipaddress objects (a hub's local table holds an IPv6 route per port)."""
    out = []
    for r in routes:
        if r.family != family:
            continue
        n = net(r.dst, r.family)
        rank = (n.prefixlen << 32) - r.metric  # longest prefix, then lowest metric
        out.append((r.family, int(n.network_address), int(n.netmask), rank, r))
    return tuple(out)


def _table_lookup(ns: Namespace, table: Compiled, dst: IPAddr) -> Route | None:
    """fib_table_lookup in one table: the longest prefix, then the lowest metric,
    skipping routes through a device that is down."""
    fam, d = dst.version, int(dst)
    best: int | None = None
    hit: Route | None = None
    for rfam, network, mask, rank, r in table:
        if rfam != fam or d & mask != network or (best is not None and rank <= best):
            continue
        out = ns.iface(r.oif) if r.oif is not None else None
        if out is not None and not out.admin_up:
            continue
        best, hit = rank, r
    return hit


def lookup(
    ns: Namespace,
    dst: str,
    src: str | None = None,
    iif: str = "lo",
    proto: str = "icmp",
    sport: int | None = None,
    dport: int | None = None,
    mark: int = 0,
    memo: dict[object, Any] | None = None,
) -> RouteResult:
    """fib_lookup: rules by priority; `iif` is "lo" for locally sent packets.
    memo (a Predictor's per-topology cache) keeps each namespace's tables and
    sorted rules across lookups: check makes thousands on one topology."""
    addr = ip(dst)
    key = ("fib", ns.inode, addr.version)
    cached = memo.get(key) if memo is not None else None
    if cached is None:
        rules = sorted((r for r in ns.rules if r.family == addr.version), key=lambda r: r.priority)
        if not rules:
            rules = DEFAULT_RULES if addr.version == 4 else [DEFAULT_RULES[0], DEFAULT_RULES[1]]
        cached = ({t: _compile(rs, addr.version) for t, rs in tables(ns).items()}, rules)
        if memo is not None:
            memo[key] = cached
    tabs, rules = cached
    i = 0
    last: Rule | None = None
    while i < len(rules):
        rule = rules[i]
        i += 1
        if not _rule_matches(rule, addr, src, iif, proto, sport, dport, mark):
            continue
        last = rule
        if rule.action in ("blackhole", "unreachable", "prohibit"):
            return RouteResult(rule.action, None, table=rule.table, rule=rule)
        if rule.action == "goto":
            # fib_rules_lookup: the target is the first rule whose priority is
            # exactly the goto's; without one the goto is unresolved and skipped
            # (the kernel refuses a goto backwards: a hand-made one cannot loop here)
            target = next(
                (j for j, r in enumerate(rules) if j >= i and r.priority == rule.goto), None
            )
            if target is not None:
                i = target
            continue
        if rule.action != "table":
            continue
        r = _table_lookup(ns, tabs.get(rule.table, ()), addr)
        if r is None or r.kind == "throw":
            continue
        if (
            rule.suppress_prefixlen is not None
            and net(r.dst, r.family).prefixlen <= rule.suppress_prefixlen
        ):
            continue
        oif = ns.iface(r.oif) if r.oif is not None else None
        return RouteResult(r.kind, r, oif, r.gateway, rule.table, rule)
    return RouteResult("none", None, rule=last)


def local_address(
    ns: Namespace, addr: str, memo: dict[object, Any] | None = None
) -> Interface | None:
    """The interface holding `addr` in ns (local table semantics: any interface);
    memo as in lookup()."""
    if memo is not None:
        held = memo.get(("local", ns.inode))
        if held is None:
            held = memo[("local", ns.inode)] = {}
            for iface in reversed(ns.interfaces):  # the first holder wins
                for a in iface.addresses:
                    held[ip(a.address)] = iface
        return held.get(ip(addr))
    want = ip(addr)
    for iface in ns.interfaces:
        for a in iface.addresses:
            if ip(a.address) == want:
                return iface
    return None


SCOPE_NUM = {"global": 0, "universe": 0, "site": 200, "link": 253, "host": 254, "nowhere": 255}


def primaries(iface: Interface, family: int) -> list[Address]:
    """iface's primary addresses of a family: an IPv4 address in the subnet (same
    prefix length) of an earlier one is secondary (__inet_insert_ifa), and
    source selection never picks it."""
    out: list[Address] = []
    for a in iface.addresses:
        if a.family != family:
            continue
        if family == 4 and any(
            p.prefixlen == a.prefixlen and ip(a.address) in net(p.cidr) for p in out
        ):
            continue
        out.append(a)
    return out


def select_source(ns: Namespace, res: RouteResult, dst: str) -> str | None:
    """The source address the kernel gives a packet it sends along res: the
    route's prefsrc, else (IPv4) inet_select_addr(egress, gateway, route scope)
    as fib_info_update_nhc_saddr asks it: the egress device's first primary
    address whose scope the route's allows, preferring one in the gateway's
    subnet (a route without gateway asks with 0: simply the first, whatever the
    destination), else the first primary address of any device with a scope
    from universe up to the route's but not link. `res.route` None (masquerade,
    nf_nat_masquerade_ipv4) asks for dst at universe scope. IPv6 (RFC 6724 is
    not modelled): an egress address in dst's prefix, else its first global one."""
    route = res.route
    if route is not None and route.prefsrc:
        return route.prefsrc
    fam = ip(dst).version
    if fam == 6:
        return _select_source6(ns, res, dst)
    scope = SCOPE_NUM.get(route.scope, 0) if route is not None else 0
    return inet_select_addr(ns, res.oif, res.gateway if route is not None else dst, scope)


def inet_select_addr(
    ns: Namespace, dev: Interface | None, dst: str | None, scope: int
) -> str | None:
    """devinet.c inet_select_addr for IPv4: dev's first primary address whose
    scope (host counted as link) is within `scope`, preferring one whose subnet
    holds dst (None: no preference); else the first primary address of any
    device with a scope within `scope` that is not link."""
    if dev is not None:
        first = None
        for a in primaries(dev, 4):
            if min(SCOPE_NUM.get(a.scope, 0), SCOPE_NUM["link"]) > scope:
                continue
            if dst is None or ip(dst) in net(a.cidr):
                return a.address
            first = first or a.address
        if first is not None:
            return first
    for iface in ns.interfaces:
        for a in primaries(iface, 4):
            s = SCOPE_NUM.get(a.scope, 0)
            if s != SCOPE_NUM["link"] and s <= scope:
                return a.address
    return None


def _select_source6(ns: Namespace, res: RouteResult, dst: str) -> str | None:
    target = ip(res.gateway or dst)
    if res.oif is not None:
        mine = [a for a in res.oif.addresses if a.family == 6 and a.scope != "link"]
        for a in mine:
            if target in net(a.cidr):
                return a.address
        if mine:
            return mine[0].address
    for iface in ns.interfaces:
        for a in iface.addresses:
            if a.family == 6 and a.scope == "global" and not ip(a.address).is_loopback:
                return a.address
    return None
