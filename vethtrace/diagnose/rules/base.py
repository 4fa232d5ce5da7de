"""What every rule needs: the registry, and a Context that answers the
questions rules keep asking about a Topology — which interfaces share an L2
domain, where would this namespace route that address, what is the effective
value of a sysctl — plus the helpers that spell fix commands with real names.

Kept free of I/O so rules run the same on a live discovery and on a recorded
snapshot.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import TYPE_CHECKING

from vethtrace.model import (
    Address,
    Finding,
    IfaceKey,
    Interface,
    Namespace,
    Route,
    Severity,
    Topology,
)

if TYPE_CHECKING:
    from vethtrace.diagnose.path.predict import Predictor

RuleFn = Callable[["Context"], Iterable[Finding]]


@lru_cache(maxsize=65536)
def _v4_interface(address: str, prefixlen: int) -> IPv4Interface:
    """Parsed once: the path checks ask for the same addresses thousands of times
    (IPv4Interface is immutable, so sharing one is safe)."""
    return IPv4Interface(f"{address}/{prefixlen}")


@dataclass(frozen=True)
class Rule:
    id: str
    title: str  # one line for `check --help`/README: what the rule catches
    fn: RuleFn
    # 0: static rules; 1: rules judging predicted paths, which run after them
    # (Context.findings holds phase 0's findings) so a failure a static rule
    # already names is not reported twice
    phase: int = 0


RULES: list[Rule] = []


def rule(rule_id: str, title: str, phase: int = 0) -> Callable[[RuleFn], RuleFn]:
    """Register a rule under its stable id."""

    def register(fn: RuleFn) -> RuleFn:
        if any(r.id == rule_id for r in RULES):
            raise ValueError(f"duplicate rule id {rule_id}")
        RULES.append(Rule(rule_id, title, fn, phase))
        return fn

    return register


# Masters whose rx_handler takes every frame a port/slave receives.
STEALING_MASTERS = {"bridge": "bridge", "openvswitch": "bridge", "bond": "bond", "team": "bond"}
# Lower devices whose rx_handler hands frames to macvlan/ipvlan children.
CHILD_KINDS = ("macvlan", "macvtap", "ipvlan", "ipvtap")


@dataclass(frozen=True)
class Where:
    """An interface together with its namespace: what rules pass around."""

    ns: Namespace
    iface: Interface

    @property
    def label(self) -> str:
        return f"{self.iface.name} in {self.ns.name}"


class Context:
    """One topology, indexed once for the questions every rule asks (O(1)
    interface and master lookups, L2 domains, per-namespace caches), so the
    whole rule set stays well under a second on hosts with hundreds of
    namespaces."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self._forwarding: dict[int, bool | None] = {}
        self._up: dict[int, list[Where]] = {}
        self.findings: list[Finding] = []  # phase 0's findings, for phase 1 rules
        self.cache: dict[str, object] = {}  # what several rules compute once (the path checks)

    @cached_property
    def predictor(self) -> Predictor:
        """One path Predictor for the whole run: its per-topology indexes (parsed
        rulesets, FDB and flood indexes, route tables) serve every rule that
        predicts (paths, overlay, missing-route), instead of one per rule."""
        from vethtrace.diagnose.path.predict import Predictor

        return Predictor(self.topo)

    # --- walking ----------------------------------------------------------

    def interfaces(self) -> Iterator[Where]:
        for ns in self.topo.namespaces:
            for iface in ns.interfaces:
                yield Where(ns, iface)

    @cached_property
    def _by_key(self) -> dict[IfaceKey, Where]:
        return {w.iface.key: w for w in self.interfaces()}

    def where(self, key: IfaceKey | None) -> Where | None:
        return self._by_key.get(key) if key is not None else None

    def master(self, ns: Namespace, iface: Interface) -> Interface | None:
        if iface.master is None:
            return None
        w = self._by_key.get(IfaceKey(ns.inode, iface.master))
        return w.iface if w is not None else None

    def up_interfaces(self, ns: Namespace) -> list[Where]:
        """Interfaces with an IP stack of their own that can carry traffic now
        (up, not lo, not a port/slave whose frames go to a master)."""
        if ns.inode not in self._up:
            self._up[ns.inode] = [
                Where(ns, i) for i in ns.interfaces
                if i.admin_up and i.kind != "loopback" and i.name != "lo"
                and not self.is_enslaved(Where(ns, i))
            ]
        return self._up[ns.inode]

    def ports(self, ns: Namespace, master: Interface) -> list[Interface]:
        return [i for i in ns.interfaces if i.master == master.key.ifindex]

    # --- addresses ------------------------------------------------------------

    @staticmethod
    def v4(iface: Interface) -> list[IPv4Interface]:
        """Global IPv4 addresses (what ARP and routing decisions are about)."""
        out = []
        for a in iface.addresses:
            if a.family == 4 and a.scope != "host" and not a.address.startswith("127."):
                out.append(_v4_interface(a.address, a.prefixlen))
        return out

    @staticmethod
    def routable(iface: Interface) -> list[Address]:
        """Addresses a neighbour would send to: IPv4 and global IPv6 (not fe80::)."""
        return [
            a
            for a in iface.addresses
            if a.scope not in ("host", "link")
            and not a.address.startswith("127.")
            and not a.address.lower().startswith("fe80:")
            and a.address != "::1"
        ]

    def owner_of(self, address: IPv4Address, among: Iterable[Where]) -> Where | None:
        for w in among:
            if any(a.ip == address for a in self.v4(w.iface)):
                return w
        return None

    # --- L2 domains ---------------------------------------------------------

    @cached_property
    def _domains(self) -> dict[IfaceKey, int]:
        """Union-find over 'frames sent here can be received there': veth
        peers, a bridge/bond with its ports, macvlan/ipvlan with its lower
        device. VLANs, tunnels and physical wires start their own domain
        (we cannot see the far side of a cable)."""
        parent: dict[IfaceKey, IfaceKey] = {}

        def find(k: IfaceKey) -> IfaceKey:
            parent.setdefault(k, k)
            while parent[k] != k:
                parent[k] = parent[parent[k]]
                k = parent[k]
            return k

        def union(a: IfaceKey, b: IfaceKey) -> None:
            parent[find(a)] = find(b)

        for w in self.interfaces():
            k = w.iface.key
            find(k)
            if w.iface.kind == "veth" and w.iface.peer is not None and self.where(w.iface.peer):
                union(k, w.iface.peer)
            m = self.master(w.ns, w.iface)
            if m is not None and m.kind in STEALING_MASTERS:
                union(k, m.key)
            lower = w.iface.link
            if w.iface.kind in CHILD_KINDS and lower is not None and self.where(lower):
                union(k, lower)
        roots: dict[IfaceKey, int] = {}
        return {k: roots.setdefault(find(k), len(roots)) for k in parent}

    @cached_property
    def _members(self) -> dict[int, list[Where]]:
        out: dict[int, list[Where]] = {}
        for w in self.interfaces():
            out.setdefault(self._domains[w.iface.key], []).append(w)
        return out

    def domain(self, key: IfaceKey) -> list[Where]:
        """Every interface in the same L2 domain as `key` (itself included)."""
        d = self._domains.get(key)
        return list(self._members.get(d, [])) if d is not None else []

    def domain_id(self, key: IfaceKey) -> int:
        return self._domains.get(key, -1)

    def neighbours(self, where: Where) -> list[Where]:
        """Interfaces of *other* namespaces that share `where`'s L2 domain and
        have a stack of their own (not a port/slave whose frames go to a master)."""
        d = self._domains.get(where.iface.key)
        return [w for w in self._stacks.get(d, []) if w.ns.inode != where.ns.inode]  # type: ignore[arg-type]

    @cached_property
    def _stacks(self) -> dict[int, list[Where]]:
        return {d: [w for w in ws if not self.is_enslaved(w)] for d, ws in self._members.items()}

    def is_enslaved(self, w: Where) -> bool:
        m = self.master(w.ns, w.iface)
        return m is not None and m.kind in STEALING_MASTERS

    # --- routing --------------------------------------------------------------

    def route_table(self, ns: Namespace) -> list[tuple[IPv4Network, Route]]:
        """The IPv4 main table as the kernel would use it; connected routes of
        up interfaces are added when the snapshot lacks them."""
        table: list[tuple[IPv4Network, Route]] = []
        for r in ns.routes:
            if r.family != 4 or r.table not in (254, 0) or r.kind != "unicast":
                continue
            dst = IPv4Network("0.0.0.0/0") if r.dst == "default" else _net(r.dst)
            if dst is not None:
                table.append((dst, r))
        for iface in ns.interfaces:
            if not iface.admin_up:
                continue
            for a in self.v4(iface):
                if a.network.prefixlen == 32:
                    continue
                if not any(n == a.network and r.oif == iface.key.ifindex for n, r in table):
                    table.append((a.network, Route(str(a.network), oif=iface.key.ifindex,
                                                   prefsrc=str(a.ip), scope="link")))
        return table

    def lookup(self, ns: Namespace, address: IPv4Address) -> Route | None:
        """Longest-prefix match in the main table (first match wins on ties,
        as fib_table_lookup does for equal metrics)."""
        best: tuple[int, Route] | None = None
        for net, r in self.route_table(ns):
            if address in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, r)
        return best[1] if best else None

    def has_default(self, ns: Namespace) -> bool:
        return any(r.dst == "default" and r.family == 4 and r.kind == "unicast"
                   for r in ns.routes)

    # --- sysctls --------------------------------------------------------------

    @staticmethod
    def sysctl(ns: Namespace, name: str) -> str | None:
        """Namespace-wide sysctl by full name ('net.ipv4.ip_forward'); None = unknown."""
        if name in ns.sysctls:
            return ns.sysctls[name]
        short = name.removeprefix("net.")
        for key in (short, short.replace("/", "."), name.replace(".", "/")):
            if key in ns.sysctls:
                return ns.sysctls[key]
        return None

    def conf(self, ns: Namespace, iface: Interface, name: str) -> tuple[int | None, int | None]:
        """(conf.all.<name>, conf.<iface>.<name>) as ints; None where unknown."""
        all_v = _int(self.sysctl(ns, f"net.ipv4.conf.all.{name}"))
        dev = iface.sysctls.get(name, iface.sysctls.get(f"net.ipv4.conf.{iface.name}.{name}"))
        dev_v = _int(dev)
        return all_v, dev_v

    def forwarding(self, ns: Namespace) -> bool | None:
        if ns.inode not in self._forwarding:
            v = self.sysctl(ns, "net.ipv4.ip_forward")
            if v is None:
                v = self.sysctl(ns, "net.ipv4.conf.all.forwarding")
            self._forwarding[ns.inode] = None if v is None else v.strip() == "1"
        return self._forwarding[ns.inode]


# --- building findings ------------------------------------------------------


def finding(
    rule_id: str,
    severity: Severity,
    where: Where | Namespace,
    summary: str,
    explanation: str,
    fix: list[str] | None = None,
) -> Finding:
    if isinstance(where, Where):
        ns_name, iface_name = where.ns.name, where.iface.name
    else:
        ns_name, iface_name = where.name, None
    return Finding(rule_id, severity, ns_name, iface_name, summary, " ".join(explanation.split()),
                   fix or [])


def ns_prefix(ns: Namespace, tool: str) -> list[str]:
    """How to run `tool` inside ns: `-n NAME` where the tool has it, `ip netns
    exec`, or nsenter for namespaces held only by a process."""
    if ns.name == "root":
        return [tool]
    if ns.named:
        if tool in ("ip", "bridge"):
            return [tool, "-n", ns.name]
        return ["ip", "netns", "exec", ns.name, tool]
    pid = ns.pids[0] if ns.pids else None
    return ["nsenter", f"--net=/proc/{pid}/ns/net", tool]


def ip(ns: Namespace, *args: object) -> str:
    return shlex.join([*ns_prefix(ns, "ip"), *map(str, args)])


def bridge_cmd(ns: Namespace, *args: object) -> str:
    return shlex.join([*ns_prefix(ns, "bridge"), *map(str, args)])


def sysctl_w(ns: Namespace, name: str, value: object) -> str:
    return shlex.join([*ns_prefix(ns, "sysctl"), "-w", f"{name}={value}"])


def move_addresses(
    ctx: Context, ns: Namespace, src: Interface, dst_name: str, dst: Interface | None = None
) -> list[str]:
    """Commands that move src's routable addresses to dst (an existing
    interface, or a new one named dst_name that the caller creates and brings
    up) and re-create the gateway routes that vanish with them: deleting an
    address deletes every route through it, the default route included."""
    cmds = []
    have = {(a.address, a.prefixlen) for a in dst.addresses} if dst else set()
    moved = ctx.routable(src)
    for a in moved:
        cmds.append(ip(ns, "addr", "del", a.cidr, "dev", src.name))
    for a in moved:
        if (a.address, a.prefixlen) not in have:
            cmds.append(ip(ns, "addr", "add", a.cidr, "dev", dst_name))
    if dst is not None and not dst.admin_up:
        cmds.append(ip(ns, "link", "set", dst_name, "up"))
    for r in ns.routes:
        if r.oif == src.key.ifindex and r.gateway and r.table in (254, 0):
            v6 = ["-6"] if r.family == 6 else []
            cmds.append(ip(ns, *v6, "route", "replace", r.dst, "via", r.gateway, "dev", dst_name))
    return cmds


def join_names(names: Iterable[str]) -> str:
    items = list(names)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _net(text: str) -> IPv4Network | None:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return net if isinstance(net, IPv4Network) else None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
