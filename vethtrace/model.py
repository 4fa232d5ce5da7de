"""The central dataclasses every stage passes along; no I/O lives here.

Data flows one way: discover (Topology) -> collect (ProbeEvent) -> correlate
(PacketPath) -> diagnose (Finding, Verdict) -> render. Keeping the types plain
dataclasses lets snapshots and recordings round-trip through JSON with
`to_dict`/`from_dict`, so offline `report` rebuilds exactly what live commands saw.

The join key between netlink, BPF and sniffers is `IfaceKey(netns inode,
ifindex)`: interface names repeat across namespaces (many hosts have a `br0`
or `eth0` in several), ifindexes repeat too, the pair does not.

Over 400 lines on purpose: these types are the contract between the stages
and, through to_dict/from_dict below, the schema of snapshots and
recordings; one file keeps every field of that schema in one place.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

Severity = Literal["error", "warning", "info"]
VerdictKind = Literal["delivered", "diverted", "dropped", "no-reply", "unreachable"]

SEVERITY_ORDER: dict[str, int] = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True, order=True)
class IfaceKey:
    netns: int  # network namespace inode
    ifindex: int

    def __str__(self) -> str:
        return f"{self.netns}:{self.ifindex}"


@dataclass
class Address:
    address: str
    prefixlen: int
    family: int = 4  # 4 or 6
    scope: str = "global"

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"


@dataclass
class BridgePortInfo:
    """Per-port bridge flags that decide whether frames get forwarded."""

    state: str = "forwarding"  # disabled|listening|learning|forwarding|blocking
    isolated: bool = False
    hairpin: bool = False
    learning: bool = True
    flood: bool = True
    mcast_flood: bool = True
    bcast_flood: bool = True
    neigh_suppress: bool = False


@dataclass
class VxlanInfo:
    """A VXLAN device's own settings (IFLA_VXLAN_*): what it encapsulates with and
    what it accepts when decapsulating (diagnose/path/vxlan.py walks both)."""

    vni: int
    port: int = 4789  # UDP destination port it sends to and listens on
    local: str | None = None  # source address of the outer packet (None: routing picks)
    group: str | None = None  # default remote (unicast) or multicast group
    link: int | None = None  # ifindex of the underlay device it is tied to (same netns)
    learning: bool = True  # learns remote MACs from received packets


@dataclass
class Interface:
    key: IfaceKey
    name: str
    kind: str  # veth, bridge, dummy, vxlan, macvlan, ipvlan, tun, bond, loopback, device, ...
    admin_up: bool
    oper_state: str  # UP, DOWN, LOWERLAYERDOWN, UNKNOWN, ...
    carrier: bool
    mtu: int
    mac: str | None = None
    master: int | None = None  # ifindex of the master in the same netns
    link: IfaceKey | None = None  # lower device (macvlan/ipvlan/vlan), may be in another netns
    peer: IfaceKey | None = None  # veth peer, resolved to its real namespace
    peer_state: str | None = None  # None when resolved; "missing" | "netns-gone" | "unknown"
    addresses: list[Address] = field(default_factory=list)
    bridge_port: BridgePortInfo | None = None  # set when the master is a bridge
    bridge_stp: bool | None = None  # set for bridges: STP enabled?
    vlan_filtering: bool | None = None  # set for bridges
    macvlan_mode: str | None = None  # set for macvlans: private, vepa, bridge, passthru, source
    sysctls: dict[str, str] = field(default_factory=dict)  # per-device ipv4 conf
    vxlan: VxlanInfo | None = None  # set for vxlan devices

    @property
    def is_up(self) -> bool:
        return self.admin_up and self.carrier


@dataclass
class Route:
    dst: str  # "default" or CIDR
    oif: int | None = None  # ifindex in the same netns
    gateway: str | None = None
    prefsrc: str | None = None
    family: int = 4
    scope: str = "universe"
    table: int = 254
    kind: str = "unicast"  # unicast, local, broadcast, blackhole, unreachable, prohibit
    metric: int = 0  # RTA_PRIORITY; lower wins among equal prefixes


@dataclass
class Neighbour:
    ifindex: int
    address: str
    lladdr: str | None
    state: str  # INCOMPLETE, REACHABLE, STALE, DELAY, PROBE, FAILED, NOARP, PERMANENT
    family: int = 4


@dataclass
class Rule:
    """A policy routing rule (`ip rule`): which table a lookup consults, in priority order."""

    priority: int
    family: int = 4
    action: str = "table"  # table | goto | nop | blackhole | unreachable | prohibit
    table: int = 254
    src: str | None = None  # CIDR
    dst: str | None = None
    iif: str | None = None  # interface name
    oif: str | None = None
    fwmark: int | None = None
    fwmask: int | None = None
    invert: bool = False  # "not"
    ip_proto: int | None = None
    sport: list[int] | None = None  # [low, high]
    dport: list[int] | None = None
    goto: int | None = None  # target priority for action goto
    suppress_prefixlen: int | None = None
    l3mdev: bool = False
    uid_range: list[int] | None = None


@dataclass
class Socket:
    """A bound TCP (listening) or UDP socket, from sock_diag."""

    proto: str  # tcp | udp
    family: int  # 4 or 6
    address: str
    port: int
    ifindex: int = 0  # bound device, 0 for any
    v6only: bool = False


@dataclass
class FdbEntry:
    ifindex: int  # the port
    mac: str
    master: int | None = None  # the bridge
    vlan: int | None = None
    flags: list[str] = field(default_factory=list)  # local/permanent/static/self/master
    dst: str | None = None  # vxlan: the remote VTEP (underlay address) frames to mac go to
    vni: int | None = None  # vxlan: a per-entry VNI, when it differs from the device's


@dataclass
class PublishedPort:
    """A port the runtime publishes on the host (a DNAT to a container), and whether
    anything can answer there: the container runs, and a socket listens on it."""

    proto: str  # tcp, udp
    host_ip: str  # "0.0.0.0" for every address
    host_port: int
    container: str  # the container's name
    container_port: int
    running: bool = True  # False: the container is stopped, so the DNAT rule is gone
    status: str = "running"  # the runtime's word: running, exited, created...
    container_ip: str = ""  # the DNAT target on this network (empty while stopped)
    listening: bool | None = None  # a socket on container_port in the container; None: unknown


@dataclass
class RuntimeNetwork:
    """A container network as its runtime's API describes it (Docker, Podman): what
    the bridge and the firewall rules in the daemon's namespace are meant to do, so
    check can tell Docker's deliberate isolation from an accident."""

    runtime: str  # docker, podman
    name: str
    id: str
    driver: str  # bridge, macvlan, ...
    bridge: str | None = None  # the Linux bridge in the daemon's namespace
    subnets: list[str] = field(default_factory=list)
    internal: bool = False  # no route out, isolation rules drop the rest
    icc: bool = True  # inter-container communication (enable_icc)
    containers: dict[str, str] = field(default_factory=dict)  # name -> "172.18.0.2/16"
    published: list[PublishedPort] = field(default_factory=list)
    api: str = ""  # the API address it was asked at, when not the runtime's default


@dataclass
class Namespace:
    inode: int
    name: str  # /run/netns name, "root", or a label such as "pid:1234(sleep)"
    named: bool = True  # False for namespaces held only by a process
    pids: list[int] = field(default_factory=list)
    container: str | None = None
    interfaces: list[Interface] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    neighbours: list[Neighbour] = field(default_factory=list)
    fdb: list[FdbEntry] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)  # namespace-wide (all/default/bridge)
    firewall: dict[str, Any] = field(default_factory=dict)  # forward-path verdicts, see topology
    partial: bool = False  # only its interfaces were read (outside a -n selection)
    # What path prediction reads (vethtrace.topology.pathfacts); empty in old snapshots.
    rules: list[Rule] = field(default_factory=list)  # policy rules, IPv4 and IPv6
    other_routes: list[Route] = field(default_factory=list)  # tables other than main (local…)
    proxy_neighbours: list[Neighbour] = field(default_factory=list)  # `ip neigh add proxy`
    sockets: list[Socket] = field(default_factory=list)  # listening tcp, bound udp
    nft: list[dict[str, Any]] | None = None  # `nft -j list ruleset`'s "nftables" array
    nft_error: str | None = None  # why the ruleset could not be printed
    runtime_networks: list[RuntimeNetwork] = field(default_factory=list)  # a daemon's, here

    def iface(self, ifindex: int | None) -> Interface | None:
        # An index, because the path model asks thousands of times (a hub with 500
        # ports); rebuilt whenever it misses or holds a stale entry, so callers may
        # still edit interfaces and keys freely.
        return _indexed(self, "interfaces", lambda i: i.key.ifindex, ifindex)

    def iface_by_name(self, name: str) -> Interface | None:
        return next((i for i in self.interfaces if i.name == name), None)


_INDEXES: dict[tuple[int, str], tuple[Any, list[Any], int, dict[Any, Any]]] = {}


def _indexed(owner: Any, attr: str, key: Callable[[Any], Any], wanted: Any) -> Any:
    """`next(x for x in owner.<attr> if key(x) == wanted)` through a dict kept
    beside owner (not in it: snapshots serialise the dataclasses' __dict__s) and
    dropped with it; a miss or a stale hit rebuilds it once, so it is never
    wrong, only fast."""
    slot = (id(owner), attr)
    items = getattr(owner, attr)
    idx = _INDEXES.get(slot)
    if idx is not None and idx[0]() is owner and idx[1] is items and idx[2] == len(items):
        hit = idx[3].get(wanted)
        if hit is not None and key(hit) == wanted:
            return hit
    table: dict[Any, Any] = {}
    for x in items:
        table.setdefault(key(x), x)
    if idx is None or idx[0]() is not owner:
        weakref.finalize(owner, _INDEXES.pop, slot, None)
    _INDEXES[slot] = (weakref.ref(owner), items, len(items), table)
    return table.get(wanted)


@dataclass
class Topology:
    namespaces: list[Namespace] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was skipped and why
    taken_at: float = 0.0
    kernel: str = ""

    def netns(self, inode: int) -> Namespace | None:
        return _indexed(self, "namespaces", lambda n: n.inode, inode)

    def netns_by_name(self, name: str) -> Namespace | None:
        return next((n for n in self.namespaces if n.name == name), None)

    def iface(self, key: IfaceKey | None) -> Interface | None:
        if key is None:
            return None
        ns = self.netns(key.netns)
        return ns.iface(key.ifindex) if ns else None

    def netns_name(self, inode: int, fallback: str | None = None) -> str:
        """How every stage names a namespace it knows by inode: its name here;
        else `fallback` when the caller has a better word for it (the name it
        was asked by); else `netns:<inode>` (an inode this snapshot lacks,
        e.g. a namespace created after discovery), or `?` for inode 0 (an
        event with no device, so no namespace)."""
        ns = self.netns(inode)
        if ns is not None:
            return ns.name
        if fallback is not None:
            return fallback
        return f"netns:{inode}" if inode else "?"

    def label(self, key: IfaceKey) -> str:
        """'netns/ifname', the way people name an interface across namespaces."""
        iface = self.iface(key)
        return f"{self.netns_name(key.netns)}/{iface.name if iface else f'if{key.ifindex}'}"


# --- packets and probe events -------------------------------------------------


@dataclass
class Encap:
    """The outer headers of a tunnelled frame (VXLAN over IPv4/UDP): where the
    node sends it (`dst`, the remote VTEP) and under which VNI."""

    kind: str  # "vxlan"
    vni: int
    src: str  # outer IPv4 source (the local VTEP)
    dst: str  # outer IPv4 destination (the remote VTEP)
    sport: int
    dport: int
    ip_id: int | None = None

    def describe(self) -> str:
        """The mark render puts on an encapsulated hop: '⊂vxlan 10.100.0.2 vni 1'."""
        return f"\u2282{self.kind} {self.dst} vni {self.vni}"


@dataclass
class PacketSummary:
    """What the probes and sniffers decoded from a frame's headers. For a
    tunnelled frame (`encap` set) the fields describe the frame it carries."""

    eth_src: str | None = None
    eth_dst: str | None = None
    ethertype: int | None = None
    arp_op: int | None = None  # 1 request, 2 reply
    arp_sha: str | None = None
    arp_spa: str | None = None
    arp_tha: str | None = None
    arp_tpa: str | None = None
    ip_src: str | None = None
    ip_dst: str | None = None
    ip_proto: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    icmp_seq: int | None = None
    sport: int | None = None
    dport: int | None = None
    # IPv4 identification: tells apart datagrams of one flow (0 for unconnected
    # UDP sockets with DF set, None in recordings made before it was decoded)
    ip_id: int | None = None
    # set when the frame is a tunnel datagram: its outer headers
    encap: Encap | None = None

    @property
    def kind(self) -> str:
        """Short class of the packet: arp-request, arp-reply, echo, echo-reply, tcp, ..."""
        if self.arp_op is not None:
            return {1: "arp-request", 2: "arp-reply"}.get(self.arp_op, f"arp-op{self.arp_op}")
        if self.icmp_type is not None:
            return {8: "echo", 0: "echo-reply", 3: "icmp-unreach"}.get(
                self.icmp_type, f"icmp-{self.icmp_type}"
            )
        if self.ip_proto is not None:
            return {6: "tcp", 17: "udp", 1: "icmp"}.get(self.ip_proto, f"ip-proto{self.ip_proto}")
        if self.ethertype is not None:
            return f"ethertype-0x{self.ethertype:04x}"
        return "unknown"

    def describe(self) -> str:
        """One line in tcpdump's spirit: 'ARP reply 192.168.122.102 is-at aa:bb:...'."""
        if self.arp_op == 1:
            return f"ARP who-has {self.arp_tpa} tell {self.arp_spa}"
        if self.arp_op == 2:
            return f"ARP reply {self.arp_spa} is-at {self.arp_sha}"
        if self.icmp_type is not None:
            name = {8: "echo request", 0: "echo reply", 3: "unreachable"}.get(
                self.icmp_type, f"type {self.icmp_type}"
            )
            extra = f" id {self.icmp_id} seq {self.icmp_seq}" if self.icmp_seq is not None else ""
            if self.icmp_type == 3:
                extra = f" code {self.icmp_code}"
            return f"ICMP {self.ip_src} > {self.ip_dst} {name}{extra}"
        if self.ip_proto in (6, 17):
            proto = "TCP" if self.ip_proto == 6 else "UDP"
            return f"{proto} {self.ip_src}:{self.sport} > {self.ip_dst}:{self.dport}"
        if self.ip_src:
            return f"IP {self.ip_src} > {self.ip_dst} proto {self.ip_proto}"
        if self.ethertype is not None:
            return f"{self.eth_src} > {self.eth_dst} ethertype 0x{self.ethertype:04x}"
        return "-"


# Neighbour (NUD) states by bit, from uapi/linux/neighbour.h (a stable ABI).
NUD_STATES: dict[int, str] = {
    0x00: "NONE",
    0x01: "INCOMPLETE",
    0x02: "REACHABLE",
    0x04: "STALE",
    0x08: "DELAY",
    0x10: "PROBE",
    0x20: "FAILED",
    0x40: "NOARP",
    0x80: "PERMANENT",
}


def nud_name(state: int) -> str | None:
    """Name of a NUD state; None for 0xFF (the probes' "no old state" marker)."""
    if state == 0xFF:
        return None
    if state in NUD_STATES:
        return NUD_STATES[state]
    named = (n for bit, n in NUD_STATES.items() if bit and state & bit)
    return "|".join(named) or f"0x{state:x}"


@dataclass
class NeighChange:
    """A neighbour-table event: which address on which device went old -> new."""

    address: str
    old_state: str | None
    new_state: str | None
    lladdr: str | None = None
    err: int | None = None


@dataclass
class ProbeEvent:
    """One kernel (or sniffer) observation. Times are kernel monotonic ns."""

    ts_ns: int
    point: str  # e.g. "net_dev_queue", "netif_receive_skb", "kfree_skb", "veth_xmit", "sniff"
    netns: int  # inode; 0 when unknown
    ifindex: int
    ifname: str
    skb: int = 0  # skb address
    head: int = 0  # skb->head: shared by clones, tells reuse from identity
    length: int = 0
    packet: PacketSummary | None = None
    drop_reason: str | None = None  # kernel's name without SKB_DROP_REASON_, from BTF
    location: str | None = None  # symbol of the drop/consume location
    neigh: NeighChange | None = None
    cloned: bool = False
    cpu: int = 0
    source: str = "bpf"  # "bpf" or "sniff"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> IfaceKey:
        return IfaceKey(self.netns, self.ifindex)


@dataclass
class Hop:
    netns: str
    interface: str
    point: str
    packet: str  # PacketSummary.describe()
    ts_ns: int
    ok: bool = True
    note: str = ""  # "taken by br0's rx_handler", "dropped: QDISC_DROP", ...
    sniffed: bool = False  # a sniffer (what tcpdump shows) saw the frame at this hop


@dataclass
class PacketPath:
    kind: str  # arp-request, arp-reply, echo, echo-reply, ...
    hops: list[Hop] = field(default_factory=list)
    outcome: str = "delivered"  # delivered | diverted | dropped | consumed | queued | in-flight
    drop_reason: str | None = None
    summary: PacketSummary | None = None  # decoded headers of the packet
    first_ns: int = 0  # kernel monotonic time of its first event


@dataclass
class Finding:
    rule: str  # stable kebab-case id
    severity: Severity
    netns: str
    interface: str | None
    summary: str
    explanation: str
    fix: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    kind: VerdictKind
    summary: str
    culprit: IfaceKey | None = None
    culprit_netns: str | None = None
    culprit_interface: str | None = None
    explanation: str = ""
    fix: list[str] = field(default_factory=list)
    # neighbour states of the next hop: {time_ns, netns, interface, address, state, ...}
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reachable(self) -> bool:
        return self.kind == "delivered"


@dataclass
class NftraceEvent:
    """One nftables trace event (the kernel's NFT_MSG_TRACE for a packet that
    carries nftrace): which rule or policy of which chain decided what.

    `verdict` is nft's word: accept, drop, continue (the rule did not end the
    chain), jump, goto, return, queue, stolen; `kind` says whether a rule
    (`rule`), the chain's policy (`policy`) or the end of a chain reached by
    jump (`return`) gave it. `rule` is the rule as `nft -a list ruleset`
    prints it; `iptables` the line `iptables -S` prints for rules made by
    iptables-nft. `ts_ns` is CLOCK_MONOTONIC when vethtrace read the event
    (the kernel's message carries no time), so it sorts just after the kernel
    probe events of the same moment.
    """

    ts_ns: int
    netns: int  # inode
    family: str  # ip | ip6 | inet | bridge | arp | netdev
    table: str
    chain: str
    kind: str  # rule | policy | return
    verdict: str
    trace_id: int = 0  # the kernel's id of this packet's pass through one hook
    handle: int | None = None
    target: str | None = None  # chain of a jump/goto
    hook: str | None = None  # the base chain's hook (prerouting, input, forward, ...)
    iif: str | None = None
    oif: str | None = None
    rule: str | None = None
    iptables: str | None = None
    packet: PacketSummary | None = None


# --- JSON round-trip ----------------------------------------------------------

# ProbeEvent's 64-bit kernel addresses: JSON numbers above 2**53 are rounded by
# jq and JavaScript, so `trace --json`, `report --json` and recordings write them
# as hex strings ("0xffff8881..."); recordings made before hold integers.
ID_FIELDS = ("skb", "head")


def hex_id(value: int) -> str:
    return f"0x{value:x}"


T = TypeVar("T")


_FIELD_NAMES: dict[Any, tuple[str, ...]] = {}
_TYPE_HINTS: dict[Any, dict[str, Any]] = {}


def _field_names(cls: Any) -> tuple[str, ...]:
    if cls not in _FIELD_NAMES:
        _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return _FIELD_NAMES[cls]


def _type_hints(cls: Any) -> dict[str, Any]:
    # get_type_hints re-evaluates every annotation string: cached, snapshots of
    # hundreds of namespaces load ~7x faster.
    if cls not in _TYPE_HINTS:
        _TYPE_HINTS[cls] = typing.get_type_hints(cls)
    return _TYPE_HINTS[cls]


def to_dict(obj: Any) -> Any:
    """Dataclasses -> plain JSON-able values (field names are the stable schema)."""
    if hasattr(type(obj), "__dataclass_fields__"):
        return {name: to_dict(getattr(obj, name)) for name in _field_names(type(obj))}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type[T], data: Any, strict: bool = False) -> T:
    """Inverse of to_dict for the dataclasses above (unknown keys are ignored,
    so newer snapshots still load into older code).

    strict=True (files a person may have edited: recordings) also checks every
    value against its field's type (int, float, str, bool, Literal, list,
    dict, nested dataclasses) and raises TypeError naming the field, so a
    `"ts_ns": "12"` is one clear error instead of a crash far away."""
    if strict and not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected an object, got {_short(data)}")
    hints = _type_hints(cls)
    kwargs = {}
    for name in _field_names(cls):
        if name in data:
            try:
                kwargs[name] = _convert(hints[name], data[name], strict)
            except TypeError as exc:
                raise TypeError(f"{name}: {exc}") from None
    return cls(**kwargs)


_SCALARS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_scalar(tp: Any, value: Any) -> None:
    ok = (
        isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        if tp is not float
        else isinstance(value, int | float) and not isinstance(value, bool)
    )
    if not ok:
        raise TypeError(f"expected {_SCALARS[tp]}, got {_short(value)}")


def _convert(tp: Any, value: Any, strict: bool = False) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value, strict) if len(args) == 1 else value
    if strict:
        if tp in _SCALARS:
            _check_scalar(tp, value)
        elif origin is Literal and value not in typing.get_args(tp):
            raise TypeError(f"expected one of {typing.get_args(tp)}, got {_short(value)}")
        elif origin in (list, dict) and not isinstance(value, origin):
            raise TypeError(f"expected a {'list' if origin is list else 'object'}, got "
                            f"{_short(value)}")  # fmt: skip
    if origin is list:
        (inner,) = typing.get_args(tp)
        return [_convert(inner, v, strict) for v in value]
    if origin is dict:
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, strict)  # type: ignore[arg-type]
    return value
