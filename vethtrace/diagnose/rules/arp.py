"""Rules about ARP settings that silence replies neighbours wait for:
arp_ignore (which addresses an interface answers for) and arp_filter
(answer only if the route back to the asker leaves the same way)."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface

from vethtrace.diagnose.rules.base import Context, Where, finding, join_names, rule, sysctl_w
from vethtrace.diagnose.rules.routing import up_interfaces
from vethtrace.model import Finding, Namespace


def _would_arp_for(ctx: Context, asker: Where, target: IPv4Address) -> bool:
    """Does asker's namespace resolve `target` itself on asker's link?"""
    r = ctx.lookup(asker.ns, target)
    if r is None or r.oif != asker.iface.key.ifindex:
        return False
    return r.gateway is None or r.gateway == str(target)


def _reset(ns: Namespace, iface: str, name: str, all_v: int | None, dev_v: int | None) -> list[str]:
    fix = []
    if all_v:
        fix.append(sysctl_w(ns, f"net.ipv4.conf.all.{name}", 0))
    if dev_v:
        fix.append(sysctl_w(ns, f"net.ipv4.conf.{iface}.{name}", 0))
    return fix


@rule("arp-ignore", "arp_ignore stops an interface answering ARP for addresses neighbours ask for")
def arp_ignore(ctx: Context) -> Iterator[Finding]:
    for ns in ctx.topo.namespaces:
        ifaces = up_interfaces(ctx, ns)
        for w in ifaces:
            all_v, dev_v = ctx.conf(ns, w.iface, "arp_ignore")
            level = max(all_v or 0, dev_v or 0)
            if level == 0 or 3 <= level < 8:
                continue
            # Level 1/2 answers only for addresses on the receiving interface; 8 for none.
            targets: list[tuple[IPv4Interface, Where]] = [
                (a, o) for o in ifaces
                if (o.iface is not w.iface or level >= 8)
                for a in ctx.v4(o.iface) if a.network.prefixlen < 32
            ]
            # An asker on the target's own link gets its answer there.
            asked = [
                (a, o, k) for a, o in targets for k in ctx.neighbours(w)
                if _would_arp_for(ctx, k, a.ip)
                and (o.iface is w.iface or ctx.domain_id(o.iface.key) != ctx.domain_id(k.iface.key))
            ]
            if not asked:
                continue
            i = w.iface.name
            shown = join_names(dict.fromkeys(
                f"{a.ip} (on {o.iface.name}) from {k.ns.name}" for a, o, k in asked[:3]))
            mode = ("never answers ARP" if level >= 8 else
                    "answers ARP only for addresses configured on the receiving interface")
            yield finding(
                "arp-ignore", "warning", w,
                f"arp_ignore={level} on {i} in {ns.name} leaves ARP for {shown} unanswered",
                f"With arp_ignore={level} the kernel {mode}. Neighbours on {i}'s link resolve "
                f"those addresses on that link, so their requests go unanswered, their entries "
                f"stay INCOMPLETE and their traffic never leaves. (The default, 0, answers for "
                f"any local address on any interface.)",
                _reset(ns, i, "arp_ignore", all_v, dev_v),
            )


@rule("arp-filter", "arp_filter drops ARP requests whose route back leaves another interface")
def arp_filter(ctx: Context) -> Iterator[Finding]:
    for ns in ctx.topo.namespaces:
        for w in up_interfaces(ctx, ns):
            all_v, dev_v = ctx.conf(ns, w.iface, "arp_filter")
            if not (all_v or dev_v):
                continue
            askers = []
            for k in ctx.neighbours(w):
                sender = next(iter(ctx.v4(k.iface)), None)
                wanted = [t for t in ctx.v4(w.iface) if _would_arp_for(ctx, k, t.ip)]
                if sender is None or not wanted:
                    continue
                back = ctx.lookup(ns, sender.ip)
                if back is None or back.oif != w.iface.key.ifindex:
                    via = ns.iface(back.oif) if back is not None else None
                    askers.append((sender.ip, k, via.name if via else "no route"))
            if not askers:
                continue
            i = w.iface.name
            shown = join_names(f"{s} in {k.ns.name} (route back via {v})" for s, k, v in askers[:3])
            yield finding(
                "arp-filter", "warning", w,
                f"arp_filter on {i} in {ns.name} ignores ARP requests from {shown}",
                f"With arp_filter=1 the kernel answers an ARP request on {i} only if its route "
                f"back to the asker leaves through {i}; here it leaves another way, so the "
                f"asker's entry stays INCOMPLETE. Fix the route, or turn arp_filter off.",
                _reset(ns, i, "arp_filter", all_v, dev_v),
            )
