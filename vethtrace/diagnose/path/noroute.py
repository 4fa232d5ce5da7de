"""No route: the hop that says a namespace cannot route a packet, with the
fix a person would paste, and, for a reply nobody can route back, the blame
on the node that forwarded the request out of its uplink without
masquerading (the decision that broke is there, not where the reply died).
"""

from __future__ import annotations

from ipaddress import ip_interface
from typing import TYPE_CHECKING

from vethtrace.diagnose.path.flow import Packet
from vethtrace.diagnose.path.route import RouteResult, conf, ip, net
from vethtrace.model import Address, Interface, Namespace, Topology

if TYPE_CHECKING:
    from vethtrace.diagnose.path.walk import Walker


def no_route(
    w: Walker, ns: Namespace, iif: Interface | None, pkt: Packet, res: RouteResult
) -> None:
    what = {
        "none": "no route",
        "blackhole": "blackhole route",
        "unreachable": "unreachable route",
        "prohibit": "prohibit route",
        "throw": "no route",
    }[res.kind]
    fix: list[str] = []
    cause = f"{ns.name} has {what} to {pkt.dst}" + (
        f" ({res.describe()})" if res.route or res.rule else ""
    )
    gw = gateway_for(w, ns)
    if res.kind == "none" and gw is not None:
        fix.append(
            w.cmd(
                ns,
                f"ip route add default via {gw}"
                if not any(r.dst == "default" for r in ns.routes)
                else f"ip route add {pkt.dst} via {gw}",
            )
        )
    blame = None
    if pkt.reply and w.forwarders and res.kind == "none":
        fns, fout = w.forwarders[-1]
        if any(
            r.dst == "default" and r.oif == fout.key.ifindex and r.family == 4 for r in fns.routes
        ):
            # ns lies beyond fns's uplink: the request left the node with a source
            # the outside was never meant to route (the missing MASQUERADE)
            blame = (fns.name, fout.name)
        cause += (
            f"; the request reached it through {fns.name}, which forwards without "
            "masquerading, so the reply is addressed to a network this side cannot route"
        )
        subnet = next(
            (str(ip_interface(a.cidr).network) for a in local_iface_addrs(w.topo, pkt.dst)),
            pkt.dst,
        )
        if blame is not None:
            fix = []  # the node's missing masquerade, not the outside's routes
        fix.append(
            w.cmd(
                fns,
                "nft 'add table ip vt_nat; add chain ip vt_nat post { type nat hook "
                f"postrouting priority 100; }}; add rule ip vt_nat post ip saddr {subnet} "
                f"oifname {fout.name} masquerade'",
            )
        )
    h = w.add(ns, iif, "route", f"{pkt.dst}: {what}", res.describe(), "fail", cause, fix)
    h.blame = blame


def gateway_for(w: Walker, ns: Namespace) -> str | None:
    """An address of a forwarding namespace on one of ns's links (for a fix)."""
    from vethtrace.topology.query import l2_domain

    for iface in ns.interfaces:
        if iface.kind == "loopback" or not iface.addresses:
            continue
        for key in l2_domain(w.topo, iface.key).endpoints:
            other = w.topo.iface(key)
            ons = w._by_inode.get(key.netns)
            if other is None or ons is None or ons.inode == ns.inode:
                continue
            if conf(ons, other, "forwarding"):
                for a in other.addresses:
                    if a.family == 4 and any(ip(a.address) in net(m.cidr) for m in iface.addresses):
                        return a.address
    return None


def name(iface: Interface | None) -> str:
    return iface.name if iface is not None else "?"


def local_iface_addrs(topo: Topology, address: str) -> list[Address]:
    """The addresses (with prefix) holding `address`, to name its subnet in a fix."""
    out: list[Address] = []
    for ns in topo.namespaces:
        for iface in ns.interfaces:
            for a in iface.addresses:
                if a.address == address:
                    out.append(a)
    return out
