"""The hop-by-hop engine: a packet sent from a namespace, through output
routing, netfilter, neighbour resolution, veth pairs and bridges, forwarding
namespaces (ip_forward, rp_filter, accept_local) to local delivery (ICMP
echo sysctls, INPUT rules, a listening socket), then the reply back, with
conntrack undoing the NAT the request met on the way.

Each decision is a Hop naming the table entry it came from; the walk stops at
the first failing one. Pure: it reads a Topology and sends nothing.
"""

from __future__ import annotations

from typing import Any, cast

from vethtrace.diagnose.path import deliver, l2, neigh, netfilter, noroute
from vethtrace.diagnose.path.flow import End, Hop, Packet, Status
from vethtrace.diagnose.path.nft import Ruleset
from vethtrace.diagnose.path.route import (
    RouteResult,
    conf,
    conf_source,
    lookup,
    select_source,
)
from vethtrace.model import IfaceKey, Interface, Namespace, Topology

MAX_HOPS = 32  # namespaces a packet may cross before we call it a loop


class Walker:
    def __init__(
        self,
        topo: Topology,
        rulesets: dict[int, Ruleset | None] | None = None,
        by_inode: dict[int, Namespace] | None = None,
        floods: dict[object, Any] | None = None,
    ) -> None:
        self.topo = topo
        self.hops: list[Hop] = []
        self.learned: dict[IfaceKey, dict[str, int]] = {}
        self.l2_seen: set[tuple[IfaceKey, str | None]] = set()
        # parsed rulesets and the namespace index outlive one walk (Predictor shares them)
        self.rulesets: dict[int, Ruleset | None] = {} if rulesets is None else rulesets
        self._by_inode = by_inode or {ns.inode: ns for ns in topo.namespaces}
        self.floods: dict[object, Any] = {} if floods is None else floods
        self.arp_for: str | None = None  # the address an ARP flood being walked asks for
        # neighbour entries the walk created: (interface, address) -> MAC
        self.neigh_learned: dict[tuple[IfaceKey, str], str] = {}
        # conntrack: namespace inode -> (packet as it entered, packet as it left)
        self.ct: dict[int, list[tuple[Packet, Packet]]] = {}
        self.forwarders: list[tuple[Namespace, Interface]] = []  # (namespace, egress) on the way
        self.budget = MAX_HOPS
        self.unreadable: set[int] = set()  # namespaces whose unreadable ruleset was named

    # --- helpers the other modules use ---------------------------------------------

    def ns_of(self, iface: Interface) -> Namespace:
        return self._by_inode[iface.key.netns]

    def hop(
        self,
        ns: Namespace,
        iface: Interface | None,
        step: str,
        decision: str,
        source: str = "",
        status: str = "ok",
        cause: str = "",
        fix: list[str] | None = None,
    ) -> Hop:
        st = cast(Status, status)
        return Hop(
            ns.name, iface.name if iface else None, step, decision, source, st, cause, fix or []
        )

    def add(self, *args: object, **kw: object) -> Hop:
        h = self.hop(*args, **kw)  # type: ignore[arg-type]
        self.hops.append(h)
        return h

    def cmd(self, ns: Namespace, command: str) -> str:
        """`command` as a person would run it in ns."""
        if ns.name == "root":
            return command
        if not ns.named:
            pid = ns.pids[0] if ns.pids else "PID"
            return f"nsenter -t {pid} -n {command}"
        for tool in ("ip ", "bridge "):
            if command.startswith(tool):
                return f"{tool}-n {ns.name} {command[len(tool) :]}"
        return f"ip netns exec {ns.name} {command}"

    # --- the walk -----------------------------------------------------------------

    def output(self, ns: Namespace, pkt: Packet) -> End:
        """A packet this namespace's own stack sends."""
        entered = pkt.copy()
        res = lookup(ns, pkt.dst, pkt.src, "lo", pkt.proto, pkt.sport, pkt.dport, memo=self.floods)
        if res.kind == "none" or res.kind in ("blackhole", "unreachable", "prohibit", "throw"):
            noroute.no_route(self, ns, None, pkt, res)
            return End("failed")
        if pkt.src is None:
            pkt.src = select_source(ns, res, pkt.dst)
            if pkt.src is not None:
                # the sender then routes again with that source, where `from`
                # rules see it: ip_route_connect for TCP (and connected UDP);
                # ping binds the source its UDP probe socket's connect found
                res = lookup(
                    ns, pkt.dst, pkt.src, "lo", pkt.proto, pkt.sport, pkt.dport, memo=self.floods
                )
                if res.kind in ("none", "blackhole", "unreachable", "prohibit", "throw"):
                    noroute.no_route(self, ns, None, pkt, res)
                    return End("failed")
            if pkt.src is None:
                self.add(
                    ns,
                    res.oif,
                    "route",
                    f"no source address for {pkt.dst}",
                    res.describe(),
                    "fail",
                    f"{ns.name} has no address to send from",
                )
                return End("failed")
        self.add(
            ns,
            res.oif,
            "route",
            f"{pkt.dst}: {res.kind}" + (f" via {res.gateway}" if res.gateway else ""),
            res.describe(),
        )
        oif_name = res.oif.name if res.oif else None
        verdict, hops = netfilter.run_hook(self, ns, "ip", "output", pkt, None, oif_name)
        self.hops += hops
        if verdict != "accept":
            return End("failed")
        if pkt.dst != entered.dst:  # DNAT in output: routed again
            res = lookup(
                ns, pkt.dst, pkt.src, "lo", pkt.proto, pkt.sport, pkt.dport, memo=self.floods
            )
            if res.kind == "none":
                noroute.no_route(self, ns, None, pkt, res)
                return End("failed")
        if res.kind in ("local", "broadcast"):
            lo = next((i for i in ns.interfaces if i.kind == "loopback"), None)
            if lo is not None and not lo.admin_up:
                self.add(
                    ns,
                    lo,
                    "route",
                    "lo is down: local delivery fails",
                    "link lo state DOWN",
                    "fail",
                    f"packets to {ns.name}'s own addresses go through lo, which is down",
                    [self.cmd(ns, "ip link set lo up")],
                )
                return End("failed")
            # a packet to one of our own addresses still goes ip_output ->
            # postrouting out of lo, and back in through ip_rcv's prerouting
            lo_name = lo.name if lo is not None else None
            for hook, iif, oif in (("postrouting", None, lo_name), ("prerouting", lo_name, None)):
                verdict, hops = netfilter.run_hook(self, ns, "ip", hook, pkt, iif, oif)
                self.hops += hops
                if verdict != "accept":
                    return End("failed")
            self.track(ns, entered, pkt)
            return deliver.deliver(self, ns, lo or res.oif, pkt, res)
        return self.transmit(ns, res, pkt, None, entered)

    def track(self, ns: Namespace, entered: Packet, left: Packet) -> None:
        self.ct.setdefault(ns.inode, []).append((entered, left.copy()))

    def transmit(
        self, ns: Namespace, res: RouteResult, pkt: Packet, iif: Interface | None, entered: Packet
    ) -> End:
        oif = res.oif
        if oif is None:
            self.add(
                ns,
                None,
                "route",
                "route without a device",
                res.describe(),
                "unknown",
                "a route without an output device is not modelled",
            )
            return End("unknown")
        size = pkt.size
        if size > oif.mtu and not pkt.df:  # ip_fragment: the pieces fit
            size = oif.mtu
            self.add(
                ns,
                oif,
                "mtu",
                f"{pkt.size} bytes fragmented to {oif.name}'s MTU {oif.mtu} (DF not set)",
                f"mtu {oif.mtu}",
            )
        if size > oif.mtu and oif.kind == "vxlan":  # the overlay's MTU budget
            from vethtrace.diagnose.path import vxlan

            self.hops.append(vxlan.too_big(self, ns, oif, pkt))
            return End("failed")
        if size > oif.mtu:
            self.add(
                ns,
                oif,
                "mtu",
                f"{pkt.size} bytes over {oif.name}'s MTU {oif.mtu}",
                f"mtu {oif.mtu}",
                "fail",
                f"the packet is larger than {oif.name}'s MTU and may not be fragmented",
                [self.cmd(ns, f"ip link set {oif.name} mtu {pkt.size}")],
            )
            return End("failed")
        verdict, hops = netfilter.run_hook(
            self, ns, "ip", "postrouting", pkt, iif.name if iif else None, oif.name
        )
        self.hops += hops
        if verdict != "accept":
            return End("failed")
        if pkt.unnat_src:
            self.add(
                ns,
                oif,
                "nat",
                f"conntrack: source {pkt.src} -> {pkt.unnat_src} (reply of a DNAT)",
                "conntrack",
            )
            pkt.src, pkt.unnat_src = pkt.unnat_src, None
        if iif is not None:
            self.forwarders.append((ns, oif))
        self.track(ns, entered, pkt)
        nexthop = res.gateway or pkt.dst
        self.l2_seen = set()
        mac, hops = neigh.resolve(self, ns, oif, nexthop, pkt.src)
        self.hops += hops
        if mac is None and oif.kind != "loopback":
            if not hops or hops[-1].status == "ok":
                self.add(
                    ns, oif, "neigh", f"{nexthop} unresolved", "", "fail", "no neighbour answers"
                )
            unknown = any(h.status == "unknown" for h in hops)
            return End("unknown" if unknown else "failed")
        self.l2_seen = set()
        result = l2.send(self, oif, l2.Frame(oif.mac, mac, pkt, size), [])
        for rif, trail in result.reached:
            if rif.key != oif.key and (mac is None or rif.mac == mac or rif.kind == "bridge"):
                self.hops += trail
                return self.receive(self.ns_of(rif), rif, pkt)
        worst = result.worst()
        self.hops += worst or [
            self.hop(
                ns,
                oif,
                "l2",
                f"no stack takes the frame for {mac}",
                "",
                "fail",
                f"nothing reachable from {oif.name} has MAC {mac}",
            )
        ]
        return End("unknown" if worst and worst[-1].status == "unknown" else "failed")

    def receive(self, ns: Namespace, iface: Interface, pkt: Packet) -> End:
        """IP input on iface."""
        self.budget -= 1
        if self.budget <= 0:
            self.add(
                ns,
                iface,
                "route",
                "too many hops: a routing loop",
                "",
                "fail",
                "the packet keeps being forwarded in a circle",
            )
            return End("failed")
        entered = pkt.copy()
        if pkt.reply:
            for first, out in self.ct.get(ns.inode, []):
                if netfilter.reply_of(out, pkt):
                    if first.src is not None and first.src != pkt.dst:
                        self.add(
                            ns,
                            iface,
                            "nat",
                            f"conntrack: destination {pkt.dst} -> {first.src} "
                            "(reply of a masquerade/SNAT)",
                            "conntrack",
                        )
                        pkt.dst = first.src or pkt.dst
                    if first.dst != pkt.src:
                        pkt.unnat_src = first.dst
                    break
        verdict, hops = netfilter.run_hook(self, ns, "ip", "prerouting", pkt, iface.name, None)
        self.hops += hops
        if verdict != "accept":
            return End("failed")
        res = lookup(
            ns, pkt.dst, pkt.src, iface.name, pkt.proto, pkt.sport, pkt.dport, memo=self.floods
        )
        if res.kind in ("none", "blackhole", "unreachable", "prohibit", "throw"):
            noroute.no_route(self, ns, iface, pkt, res)
            return End("failed")
        # ip_route_input_slow: a packet not for us is refused when the input
        # device does not forward, before __mkroute_input validates its source
        local = res.kind in ("local", "broadcast")
        if not local and not conf(ns, iface, "forwarding"):
            self.add(
                ns,
                iface,
                "forward",
                "not forwarding",
                conf_source(iface, "forwarding") + "=0",
                "fail",
                f"{ns.name} would route {pkt.dst} via {noroute.name(res.oif)}, but forwarding "
                f"is off on {iface.name}",
                [self.cmd(ns, "sysctl -w net.ipv4.ip_forward=1")],
            )
            return End("failed")
        if pkt.src and deliver.martian_local(self, ns, iface, pkt.src):
            self.add(
                ns,
                iface,
                "martian",
                f"source {pkt.src} is one of {ns.name}'s own addresses",
                conf_source(iface, "accept_local") + "=0",
                "fail",
                "a packet arriving with a local source address is dropped as martian",
                [self.cmd(ns, f"sysctl -w net.ipv4.conf.{iface.name}.accept_local=1")],
            )
            return End("failed")
        if not deliver.rp_filter(self, ns, iface, pkt, None if local else res.oif):
            return End("failed")
        if local:
            self.add(ns, iface, "route", f"{pkt.dst}: {res.kind}", res.describe())
            self.track(ns, entered, pkt)
            return deliver.deliver(self, ns, iface, pkt, res)
        self.add(
            ns,
            iface,
            "forward",
            f"forwards {pkt.dst}"
            + (f" via {res.gateway}" if res.gateway else "")
            + f" out of {res.oif.name if res.oif else '?'}",
            res.describe(),
        )
        verdict, hops = netfilter.run_hook(
            self, ns, "ip", "forward", pkt, iface.name, res.oif.name if res.oif else None
        )
        self.hops += hops
        if verdict != "accept":
            return End("failed")
        return self.transmit(ns, res, pkt, iface, entered)
