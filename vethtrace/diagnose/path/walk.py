"""The hop-by-hop engine: a packet sent from a namespace, through output
routing, netfilter, neighbour resolution, veth pairs and bridges, forwarding
namespaces (ip_forward, rp_filter, accept_local) to local delivery (ICMP
echo sysctls, INPUT rules, a listening socket), then the reply back, with
conntrack undoing the NAT the request met on the way.

Each decision is a Hop naming the table entry it came from; the walk stops at
the first failing one. Pure: it reads a Topology and sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_interface
from typing import Any, cast

from vethtrace.diagnose.path import bridge, neigh
from vethtrace.diagnose.path.flow import Flow, Hop, Packet, PathPrediction, Status
from vethtrace.diagnose.path.nft import FAMILIES, Ctx, HookResult, Ruleset, evaluate
from vethtrace.diagnose.path.route import (
    RouteResult,
    conf,
    conf_source,
    ip,
    local_address,
    lookup,
    net,
    select_source,
)
from vethtrace.model import Address, IfaceKey, Interface, Namespace, Topology

MAX_HOPS = 32  # namespaces a packet may cross before we call it a loop


@dataclass
class End:
    kind: str  # delivered | failed | unknown
    ns: Namespace | None = None
    iface: Interface | None = None
    pkt: Packet | None = None


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
        self._rulesets: dict[int, Ruleset | None] = {} if rulesets is None else rulesets
        self._by_inode = by_inode or {ns.inode: ns for ns in topo.namespaces}
        self.floods: dict[object, Any] = {} if floods is None else floods
        self.arp_for: str | None = None  # the address an ARP flood being walked asks for
        # neighbour entries the walk created: (interface, address) -> MAC
        self.neigh_learned: dict[tuple[IfaceKey, str], str] = {}
        # conntrack: namespace inode -> (packet as it entered, packet as it left)
        self.ct: dict[int, list[tuple[Packet, Packet]]] = {}
        self.forwarders: list[tuple[Namespace, Interface]] = []  # (namespace, egress) on the way
        self.budget = MAX_HOPS
        self._unreadable: set[int] = set()  # namespaces whose unreadable ruleset was named

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

    def ruleset(self, ns: Namespace) -> Ruleset | None:
        if ns.inode not in self._rulesets:
            self._rulesets[ns.inode] = Ruleset.parse(ns.nft) if ns.nft else None
        return self._rulesets[ns.inode]

    def nft_hook(
        self, ns: Namespace, kind: str, hook: str, pkt: Packet, iif: str | None, oif: str | None
    ) -> tuple[str, list[Hop]]:
        """Run the hook's base chains; NAT rewrites pkt. ("accept"|"drop", hops)."""
        rs = self.ruleset(ns)
        if rs is None:
            if ns.nft_error and ns.inode not in self._unreadable:
                # the chains exist but nft could not print them: say so, never guess
                self._unreadable.add(ns.inode)
                return "accept", [
                    self.hop(
                        ns,
                        ns.iface_by_name(iif or oif or ""),
                        "nft",
                        f"{hook}: ruleset not readable, taken as accepting",
                        "nft list ruleset",
                        "unknown",
                        f"nft could not print {ns.name}'s ruleset: {ns.nft_error}",
                    )
                ]
            return "accept", []
        fam = 4 if ip(pkt.dst).version == 4 else 6
        families = ("bridge",) if kind == "bridge" else FAMILIES[fam]
        if not rs.base(families, hook):
            return "accept", []
        ctx = Ctx(
            fam,
            pkt.src or "0.0.0.0",
            pkt.dst,
            pkt.proto,
            pkt.sport,
            pkt.dport,
            iif,
            oif,
            "established" if pkt.reply and self._tracked(ns, pkt) else "new",
            pkt.reply,
            ("echo-reply" if pkt.reply else "echo-request") if pkt.proto == "icmp" else None,
        )
        res: HookResult = evaluate(rs, families, hook, ctx)
        hops = []
        iface = ns.iface_by_name(iif or oif or "")
        for st in res.steps:
            hops.append(
                self.hop(
                    ns,
                    iface,
                    "nft",
                    f"{hook}: {st.decision}" + (f"  [{st.rule}]" if st.rule else ""),
                    st.source,
                    st.status,
                    ""
                    if st.status == "ok"
                    else (
                        f"{st.source} drops it: {st.rule or 'the chain policy'}"
                        if st.status == "fail"
                        else f"the model cannot evaluate {st.rule}"
                    ),
                    self._nft_fix(ns, st.source, pkt, iif, oif) if st.status == "fail" else [],
                )
            )
        if res.verdict == "drop":
            if not any(h.status == "fail" for h in hops):
                hops.append(
                    self.hop(ns, iface, "nft", f"{hook}: dropped", "nft", "fail", "a rule drops it")
                )
            return "drop", hops
        if res.nat is not None:
            kind_, addr, port = res.nat
            before = pkt.describe()
            if kind_ in ("masquerade", "snat"):
                out = ns.iface_by_name(oif or "")
                new = addr or (
                    select_source(ns, RouteResult("unicast", None, out), pkt.dst) if out else None
                )
                pkt.src = new
                if port is not None:
                    pkt.sport = port
            elif kind_ in ("dnat", "redirect"):
                if kind_ == "redirect":
                    inn = ns.iface_by_name(iif or "")
                    addr = next(
                        (a.address for a in (inn.addresses if inn else []) if a.family == 4),
                        "127.0.0.1",
                    )
                if addr:
                    pkt.dst = addr
                if port is not None:
                    pkt.dport = port
            hops.append(
                self.hop(
                    ns,
                    iface,
                    "nat",
                    f"{hook}: {kind_}: {before} -> {pkt.describe()}",
                    next((s.source for s in reversed(res.steps)), "nft"),
                )
            )
        return "accept", hops

    def _nft_fix(
        self, ns: Namespace, source: str, pkt: Packet, iif: str | None, oif: str | None
    ) -> list[str]:
        parts = source.split()
        if len(parts) >= 6 and parts[4] == "handle":
            _nft, fam, table, chain, _h, handle = parts[:6]
            return [self.cmd(ns, f"nft delete rule {fam} {table} {chain} handle {handle}")]
        if len(parts) >= 4:
            _nft, fam, table, chain = parts[:4]
            match = f"ip saddr {pkt.src} ip daddr {pkt.dst}" if fam != "bridge" else ""
            if (
                (iif and chain.upper() in ("FORWARD", "INPUT"))
                or "forward" in chain
                or "input" in chain
            ):
                match = (
                    (f"iifname {iif} " if iif else "") + (f"oifname {oif} " if oif else "") + match
                )
            return [self.cmd(ns, f"nft insert rule {fam} {table} {chain} {match.strip()} accept")]
        return []

    def br_netfilter(self, ns: Namespace, br: Interface, pkt: Packet) -> tuple[str, list[Hop]]:
        if ns.sysctls.get("net.bridge.bridge-nf-call-iptables") != "1":
            return "accept", []
        verdict, hops = self.nft_hook(ns, "ip", "forward", pkt, br.name, br.name)
        for h in hops:
            h.decision = f"br_netfilter {h.decision}"
        if hops:
            src = "sysctl net.bridge.bridge-nf-call-iptables=1"
            hops.insert(
                0,
                self.hop(
                    ns, br, "bridge", "bridged IP passes the ip forward hook (br_netfilter)", src
                ),
            )
        return verdict, hops

    def _tracked(self, ns: Namespace, pkt: Packet) -> bool:
        return any(self._reply_of(out, pkt) for _in, out in self.ct.get(ns.inode, []))

    @staticmethod
    def _reply_of(out: Packet, pkt: Packet) -> bool:
        return (
            pkt.src == out.dst
            and pkt.dst == out.src
            and pkt.proto == out.proto
            and pkt.sport == out.dport
            and pkt.dport == out.sport
        )

    # --- the walk -----------------------------------------------------------------

    def output(self, ns: Namespace, pkt: Packet) -> End:
        """A packet this namespace's own stack sends."""
        entered = pkt.copy()
        res = lookup(ns, pkt.dst, pkt.src, "lo", pkt.proto, pkt.sport, pkt.dport)
        if res.kind == "none" or res.kind in ("blackhole", "unreachable", "prohibit", "throw"):
            self._no_route(ns, None, pkt, res)
            return End("failed")
        if pkt.src is None:
            pkt.src = select_source(ns, res, pkt.dst)
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
        verdict, hops = self.nft_hook(ns, "ip", "output", pkt, None, oif_name)
        self.hops += hops
        if verdict != "accept":
            return End("failed")
        if pkt.dst != entered.dst:  # DNAT in output: routed again
            res = lookup(ns, pkt.dst, pkt.src, "lo", pkt.proto, pkt.sport, pkt.dport)
            if res.kind == "none":
                self._no_route(ns, None, pkt, res)
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
            self._track(ns, entered, pkt)
            return self.deliver(ns, lo or res.oif, pkt, res)
        return self.transmit(ns, res, pkt, None, entered)

    def _no_route(
        self, ns: Namespace, iif: Interface | None, pkt: Packet, res: RouteResult
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
        gw = self._gateway_for(ns)
        if res.kind == "none" and gw is not None:
            fix.append(
                self.cmd(
                    ns,
                    f"ip route add default via {gw}"
                    if not any(r.dst == "default" for r in ns.routes)
                    else f"ip route add {pkt.dst} via {gw}",
                )
            )
        blame = None
        if pkt.reply and self.forwarders and res.kind == "none":
            fns, fout = self.forwarders[-1]
            if any(
                r.dst == "default" and r.oif == fout.key.ifindex and r.family == 4
                for r in fns.routes
            ):
                # ns lies beyond fns's uplink: the request left the node with a source
                # the outside was never meant to route (the missing MASQUERADE)
                blame = (fns.name, fout.name)
            cause += (
                f"; the request reached it through {fns.name}, which forwards without "
                "masquerading, so the reply is addressed to a network this side cannot route"
            )
            subnet = next(
                (str(ip_interface(a.cidr).network) for a in local_iface_addrs(self.topo, pkt.dst)),
                pkt.dst,
            )
            if blame is not None:
                fix = []  # the node's missing masquerade, not the outside's routes
            fix.append(
                self.cmd(
                    fns,
                    "nft 'add table ip vt_nat; add chain ip vt_nat post { type nat hook "
                    f"postrouting priority 100; }}; add rule ip vt_nat post ip saddr {subnet} "
                    f"oifname {fout.name} masquerade'",
                )
            )
        h = self.add(ns, iif, "route", f"{pkt.dst}: {what}", res.describe(), "fail", cause, fix)
        h.blame = blame

    def _gateway_for(self, ns: Namespace) -> str | None:
        """An address of a forwarding namespace on one of ns's links (for a fix)."""
        from vethtrace.topology.query import l2_domain

        for iface in ns.interfaces:
            if iface.kind == "loopback" or not iface.addresses:
                continue
            for key in l2_domain(self.topo, iface.key).endpoints:
                other = self.topo.iface(key)
                ons = self._by_inode.get(key.netns)
                if other is None or ons is None or ons.inode == ns.inode:
                    continue
                if conf(ons, other, "forwarding"):
                    for a in other.addresses:
                        if a.family == 4 and any(
                            ip(a.address) in net(m.cidr) for m in iface.addresses
                        ):
                            return a.address
        return None

    def _track(self, ns: Namespace, entered: Packet, left: Packet) -> None:
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
        if pkt.size > oif.mtu:
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
        verdict, hops = self.nft_hook(
            ns, "ip", "postrouting", pkt, iif.name if iif else None, oif.name
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
        self._track(ns, entered, pkt)
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
        result = bridge.send(self, oif, bridge.Frame(oif.mac, mac, pkt, pkt.size), [])
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
                if self._reply_of(out, pkt):
                    if first.src != pkt.dst:
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
        verdict, hops = self.nft_hook(ns, "ip", "prerouting", pkt, iface.name, None)
        self.hops += hops
        if verdict != "accept":
            return End("failed")
        res = lookup(ns, pkt.dst, pkt.src, iface.name, pkt.proto, pkt.sport, pkt.dport)
        if res.kind in ("none", "blackhole", "unreachable", "prohibit", "throw"):
            self._no_route(ns, iface, pkt, res)
            return End("failed")
        if (
            pkt.src
            and local_address(ns, pkt.src) is not None
            and not conf(ns, iface, "accept_local")
        ):
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
        if not self._rp_filter(ns, iface, pkt):
            return End("failed")
        if res.kind in ("local", "broadcast"):
            self.add(ns, iface, "route", f"{pkt.dst}: {res.kind}", res.describe())
            self._track(ns, entered, pkt)
            return self.deliver(ns, iface, pkt, res)
        if not conf(ns, iface, "forwarding"):
            self.add(
                ns,
                iface,
                "forward",
                "not forwarding",
                conf_source(iface, "forwarding") + "=0",
                "fail",
                f"{ns.name} would route {pkt.dst} via {_name(res.oif)}, but forwarding "
                f"is off on {iface.name}",
                [self.cmd(ns, "sysctl -w net.ipv4.ip_forward=1")],
            )
            return End("failed")
        self.add(
            ns,
            iface,
            "forward",
            f"forwards {pkt.dst}"
            + (f" via {res.gateway}" if res.gateway else "")
            + f" out of {res.oif.name if res.oif else '?'}",
            res.describe(),
        )
        verdict, hops = self.nft_hook(
            ns, "ip", "forward", pkt, iface.name, res.oif.name if res.oif else None
        )
        self.hops += hops
        if verdict != "accept":
            return End("failed")
        return self.transmit(ns, res, pkt, iface, entered)

    def _rp_filter(self, ns: Namespace, iface: Interface, pkt: Packet) -> bool:
        mode = conf(ns, iface, "rp_filter")
        if not mode or pkt.src is None:
            return True
        back = lookup(ns, pkt.src, pkt.dst, "lo", pkt.proto, pkt.dport, pkt.sport)
        src = conf_source(iface, "rp_filter") + f"={mode}"
        if back.kind not in ("unicast", "local") or (
            mode == 1 and (back.oif is None or back.oif.key != iface.key)
        ):
            how = (
                "no route back"
                if back.kind not in ("unicast", "local")
                else f"the route back leaves via {_name(back.oif)}, not {iface.name}"
            )
            self.add(
                ns,
                iface,
                "rp_filter",
                f"reverse path check fails: {how}",
                src,
                "fail",
                f"rp_filter={mode} ({'strict' if mode == 1 else 'loose'}) drops packets "
                f"from {pkt.src} "
                f"arriving on {iface.name}: {how}",
                [
                    self.cmd(ns, f"ip route add {pkt.src} dev {iface.name}"),
                    self.cmd(
                        ns,
                        "sysctl -w net.ipv4.conf.all.rp_filter=2 "
                        f"net.ipv4.conf.{iface.name}.rp_filter=2",
                    ),
                ],
            )
            return False
        return True

    def deliver(self, ns: Namespace, iface: Interface | None, pkt: Packet, res: RouteResult) -> End:
        name = iface.name if iface else None
        verdict, hops = self.nft_hook(ns, "ip", "input", pkt, name, None)
        self.hops += hops
        if verdict != "accept":
            return End("failed")
        if pkt.reply:
            self.add(ns, iface, "deliver", f"{pkt.describe()} reaches the sender's socket", "local")
            return End("delivered", ns, iface, pkt)
        if pkt.proto == "icmp":
            key = (
                "net.ipv4.icmp_echo_ignore_broadcasts"
                if res.kind == "broadcast"
                else "net.ipv4.icmp_echo_ignore_all"
            )
            default = "1" if res.kind == "broadcast" else "0"
            if ns.sysctls.get(key, default) == "1":
                self.add(
                    ns,
                    iface,
                    "deliver",
                    "echo request ignored",
                    f"sysctl {key}=1",
                    "fail",
                    f"{key}=1: the kernel answers no echo request"
                    + (" sent to a broadcast address" if res.kind == "broadcast" else ""),
                    [self.cmd(ns, f"sysctl -w {key}=0")],
                )
                return End("failed")
            self.add(
                ns, iface, "deliver", f"echo request for {pkt.dst}: answered", f"sysctl {key}=0"
            )
            return End("delivered", ns, iface, pkt)
        sock = next(
            (
                s
                for s in ns.sockets
                if s.proto == pkt.proto
                and s.port == pkt.dport
                and s.address in (pkt.dst, "0.0.0.0", "::", f"::ffff:{pkt.dst}")
                and not (s.family == 6 and s.v6only and ip(pkt.dst).version == 4)
                and s.ifindex in (0, iface.key.ifindex if iface else 0)
            ),
            None,
        )
        if sock is None:
            self.add(
                ns,
                iface,
                "socket",
                f"nothing listens on {pkt.proto}/{pkt.dport}",
                f"sockets of {ns.name} ({pkt.proto})",
                "fail",
                f"no socket in {ns.name} is bound to {pkt.proto} port {pkt.dport}"
                + (
                    ": the kernel answers with a TCP reset"
                    if pkt.proto == "tcp"
                    else ": the kernel answers port unreachable"
                ),
                [self.cmd(ns, f"nc -l{'u' if pkt.proto == 'udp' else ''} -p {pkt.dport}")],
            )
            return End("failed")
        self.add(
            ns,
            iface,
            "socket",
            f"{pkt.proto} socket {sock.address}:{sock.port} takes it",
            f"socket {pkt.proto} {sock.address}:{sock.port}",
        )
        return End("delivered", ns, iface, pkt)


def _name(iface: Interface | None) -> str:
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


class Predictor:
    """Many predictions on one topology (check asks hundreds): the namespace
    index and parsed rulesets are built once, not per packet."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self._rulesets: dict[int, Ruleset | None] = {}
        self._by_inode = {ns.inode: ns for ns in topo.namespaces}
        self._by_name = {ns.name: ns for ns in topo.namespaces}
        self._floods: dict[object, Any] = {}

    def predict(self, flow: Flow) -> PathPrediction:
        src = self._by_name.get(flow.src_netns)
        if src is None:
            raise ValueError(f"no namespace {flow.src_netns!r} in the topology")
        w = Walker(self.topo, self._rulesets, self._by_inode, self._floods)
        return _predict(w, src, flow)


def predict(topo: Topology, flow: Flow) -> PathPrediction:
    """Predict the packet's path from flow.src_netns to flow.dst and its reply's."""
    return Predictor(topo).predict(flow)


def _predict(w: Walker, src: Namespace, flow: Flow) -> PathPrediction:
    pred = PathPrediction(flow)
    if flow.proto == "arp":
        res = lookup(src, flow.dst)
        sip = select_source(src, res, flow.dst)
        if res.oif is None:
            w._no_route(src, None, Packet(sip, flow.dst, "arp"), res)
            pred.forward, pred.forward_outcome, pred.reply_outcome = w.hops, "failed", "none"
            return pred
        mac, hops = neigh.resolve(w, src, res.oif, res.gateway or flow.dst, sip)
        pred.forward = [
            w.hop(src, res.oif, "route", f"{flow.dst}: {res.kind}", res.describe()),
            *hops,
        ]
        pred.forward_outcome = (
            "delivered"
            if mac
            else ("failed" if any(h.status == "fail" for h in hops) else "unknown")
        )
        pred.reply_outcome = "none"
        return pred
    pkt = Packet(
        None,
        flow.dst,
        flow.proto,
        flow.sport if flow.proto != "icmp" else None,
        flow.port if flow.proto != "icmp" else None,
        flow.size,
    )
    end = w.output(src, pkt)
    pred.forward, pred.forward_outcome = w.hops, end.kind
    if end.kind != "delivered" or end.ns is None or end.pkt is None:
        return pred
    pred.delivered_to = f"{end.ns.name}/{end.iface.name}" if end.iface else end.ns.name
    got = end.pkt
    reply = Packet(got.dst, got.src or "", got.proto, got.dport, got.sport, got.size, reply=True)
    w.hops = []
    w.budget = MAX_HOPS
    back = w.output(end.ns, reply)
    if back.kind == "delivered" and back.ns is not None and back.ns.inode != src.inode:
        w.add(
            back.ns,
            back.iface,
            "deliver",
            f"the reply ends in {back.ns.name}, not {src.name}",
            "",
            "fail",
            f"{back.pkt.dst if back.pkt else '?'} is held by {back.ns.name} too: the reply never "
            f"returns to {src.name}",
        )
        back = End("failed")
    pred.reply, pred.reply_outcome = w.hops, back.kind
    return pred
