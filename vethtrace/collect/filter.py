"""A pcap-filter subset compiled to a C expression evaluated inside the BPF probes.

Why not libpcap's BPF bytecode: our probes see an sk_buff, not a linear
packet buffer at a fixed offset, and decode the headers once into a small
struct (vethtrace/probes/vethtrace.h `struct vt_pkt`). Filtering over that struct is a
handful of comparisons, so traffic that does not match costs almost nothing.

Supported (as tcpdump): `arp`, `ip`, `icmp`, `tcp`, `udp`, `[src|dst] host A`,
`[src|dst] net A/N`, `[src|dst] port N`, a bare address (= host), `tcp port N`
style protocol qualifiers, value lists inheriting the last qualifier
(`port 80 or 443`), `and`/`&&`, `or`/`||`, `not`/`!`, parentheses. `host`
matches ARP sender/target addresses too, like tcpdump. Anything else is a
UserError naming the unsupported part.

Tunnels: a VXLAN datagram (IPv4/UDP to port 4789 with a VXLAN header)
matches when its outer headers OR the frame it carries match, so
`icmp and host 10.244.1.2` follows a pod's ping into the tunnel and across
the underlay, and `udp port 4789` still selects the tunnel traffic itself.
The probes evaluate the same expression on each level (vethtrace.h,
vt_skb_seen).

The same tree also evaluates in Python (`Filter.matches(PacketSummary)`), which
the tests use to check the C against, and which sniffers may reuse.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from vethtrace.errors import UserError
from vethtrace.model import PacketSummary

PROTOS = {"arp", "ip", "icmp", "tcp", "udp"}
QUALS = {"host", "net", "port"}
DIRS = {"src", "dst"}
_TOKEN = re.compile(r"\s*(\(|\)|&&|\|\||!|[^\s()!&|]+)")


@dataclass(frozen=True)
class Node:
    op: str  # "and" "or" "not" "proto" "host" "net" "port" "true"
    args: tuple = ()


def _tokens(text: str) -> list[str]:
    pos, out = 0, []
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise UserError(f"unsupported filter syntax at {text[pos:]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.last: tuple[str, str | None] | None = None  # (qual, dir) for bare values

    def peek(self) -> str | None:
        return self.toks[self.i].lower() if self.i < len(self.toks) else None

    def take(self) -> str:
        if self.i >= len(self.toks):
            raise UserError(f"filter {self.text!r} ends too early")
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def parse(self) -> Node:
        if not self.toks:
            return Node("true")
        node = self.or_()
        if self.i < len(self.toks):
            rest = " ".join(self.toks[self.i :])
            raise UserError(f"unsupported filter syntax at {rest!r}")
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.peek() in ("or", "||"):
            self.take()
            node = Node("or", (node, self.and_()))
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.peek() in ("and", "&&"):
            self.take()
            node = Node("and", (node, self.not_()))
        return node

    def not_(self) -> Node:
        if self.peek() in ("not", "!"):
            self.take()
            return Node("not", (self.not_(),))
        return self.primary()

    def primary(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise UserError(f"filter {self.text!r} ends too early")
        if tok == "(":
            self.take()
            node = self.or_()
            if self.peek() != ")":
                raise UserError(f"missing ')' in filter {self.text!r}")
            self.take()
            return node
        if tok == ")":
            raise UserError(f"unexpected ')' in filter {self.text!r}")
        if tok in PROTOS:
            self.take()
            proto = Node("proto", (tok,))
            if self.peek() in QUALS | DIRS:  # "tcp port 80", "ip host A"
                return Node("and", (proto, self.qualified()))
            return proto
        if tok in QUALS | DIRS:
            return self.qualified()
        # a bare value inherits the last qualifier ("port 80 or 443"), else is a host
        raw = self.take()
        qual, direction = self.last or ("host", None)
        return self.value(qual, direction, raw)

    def qualified(self) -> Node:
        direction = None
        if self.peek() in DIRS:
            direction = self.take().lower()
        qual = "host"
        if self.peek() in QUALS:
            qual = self.take().lower()
        elif self.peek() in ("and", "or", "&&", "||", ")", None):
            raise UserError(f"{direction!r} needs host, net or port in filter {self.text!r}")
        self.last = (qual, direction)
        return self.value(qual, direction, self.take())

    def value(self, qual: str, direction: str | None, raw: str) -> Node:
        if qual == "port":
            if not raw.isdigit() or not 0 <= int(raw) <= 65535:
                raise UserError(f"bad port {raw!r} in filter (0-65535)")
            return Node("port", (direction, int(raw)))
        if qual == "net":
            try:
                net = ipaddress.IPv4Network(raw, strict=False)
            except ValueError:
                raise UserError(
                    f"unsupported filter syntax at {raw!r} (want IPv4 net A/N)"
                ) from None
            return Node("net", (direction, str(net.network_address), net.prefixlen))
        try:
            addr = ipaddress.IPv4Address(raw)
        except ValueError:
            raise UserError(
                f"unsupported filter syntax at {raw!r} (want an IPv4 address)"
            ) from None
        return Node("host", (direction, str(addr)))


def _le32(addr: str) -> int:
    """An IPv4 address as the u32 a little-endian CPU reads from network-order bytes."""
    return int.from_bytes(ipaddress.IPv4Address(addr).packed, "little")


def _c(node: Node) -> str:
    op, a = node.op, node.args
    if op == "true":
        return "1"
    if op == "and":
        return f"({_c(a[0])} && {_c(a[1])})"
    if op == "or":
        return f"({_c(a[0])} || {_c(a[1])})"
    if op == "not":
        return f"(!{_c(a[0])})"
    ip = "(p)->ethertype == 0x0800"
    addr_ok = "((p)->ethertype == 0x0800 || (p)->ethertype == 0x0806)"
    if op == "proto":
        return {
            "arp": "((p)->ethertype == 0x0806)",
            "ip": f"({ip})",
            "icmp": f"({ip} && (p)->ip_proto == 1)",
            "tcp": f"({ip} && (p)->ip_proto == 6)",
            "udp": f"({ip} && (p)->ip_proto == 17)",
        }[a[0]]
    direction = a[0]
    fields = {"src": ["saddr"], "dst": ["daddr"], None: ["saddr", "daddr"]}[direction]
    if op == "host":
        v = _le32(a[1])
        tests = " || ".join(f"(p)->{f} == {v:#x}u" for f in fields)
        return f"({addr_ok} && ({tests}))"
    if op == "net":
        mask = _le32(str(ipaddress.IPv4Network(f"0.0.0.0/{a[2]}").netmask))
        v = _le32(a[1]) & mask
        tests = " || ".join(f"((p)->{f} & {mask:#x}u) == {v:#x}u" for f in fields)
        return f"({addr_ok} && ({tests}))"
    if op == "port":
        pfields = {"src": ["sport"], "dst": ["dport"], None: ["sport", "dport"]}[direction]
        tests = " || ".join(f"(p)->{f} == {a[1]}" for f in pfields)
        l4 = "((p)->flags & VT_PKT_L4) && ((p)->ip_proto == 6 || (p)->ip_proto == 17)"
        return f"({ip} && {l4} && ({tests}))"
    raise AssertionError(op)


def _empty(node: Node) -> bool:
    """The filter's value when every primitive is false (see Filter.matches_empty)."""
    op, a = node.op, node.args
    if op == "true":
        return True
    if op == "and":
        return _empty(a[0]) and _empty(a[1])
    if op == "or":
        return _empty(a[0]) or _empty(a[1])
    if op == "not":
        return not _empty(a[0])
    return False  # proto, host, net, port all need an ethertype


def _ethertype(pkt: PacketSummary) -> int | None:
    if pkt.ethertype is not None:
        return pkt.ethertype
    if pkt.arp_op is not None:
        return 0x0806
    return 0x0800 if pkt.ip_src else None


def _eval(node: Node, pkt: PacketSummary) -> bool:
    op, a = node.op, node.args
    if op == "true":
        return True
    if op == "and":
        return _eval(a[0], pkt) and _eval(a[1], pkt)
    if op == "or":
        return _eval(a[0], pkt) or _eval(a[1], pkt)
    if op == "not":
        return not _eval(a[0], pkt)
    et = _ethertype(pkt)
    if op == "proto":
        want = {"icmp": 1, "tcp": 6, "udp": 17}
        if a[0] == "arp":
            return et == 0x0806
        return et == 0x0800 and (a[0] == "ip" or pkt.ip_proto == want[a[0]])
    src, dst = (pkt.arp_spa, pkt.arp_tpa) if et == 0x0806 else (pkt.ip_src, pkt.ip_dst)
    if et not in (0x0800, 0x0806) and op != "port":
        return False
    addrs = {"src": [src], "dst": [dst], None: [src, dst]}[a[0]]
    if op == "host":
        return a[1] in addrs
    if op == "net":
        net = ipaddress.IPv4Network(f"{a[1]}/{a[2]}")
        return any(x is not None and ipaddress.IPv4Address(x) in net for x in addrs)
    if op == "port":
        if et != 0x0800 or pkt.ip_proto not in (6, 17):
            return False
        ports = {"src": [pkt.sport], "dst": [pkt.dport], None: [pkt.sport, pkt.dport]}[a[0]]
        return a[1] in ports
    raise AssertionError(op)


@dataclass(frozen=True)
class Filter:
    text: str
    tree: Node

    @property
    def active(self) -> bool:
        return self.tree.op != "true"

    def to_c(self) -> str:
        """C expression over `p` (struct vt_pkt *), for `#define VT_FILTER(p)`."""
        return _c(self.tree)

    @property
    def matches_empty(self) -> bool:
        """Whether the C expression is true for a packet with nothing decoded
        (struct vt_pkt all zero: no ethertype, so every primitive is false).
        When not, the probes drop skbs without a protocol before any further
        read (VT_FILTER_EMPTY=0)."""
        return _empty(self.tree)

    def matches(self, pkt: PacketSummary) -> bool:
        """As the probes decide: a tunnelled frame matches by the frame it
        carries (pkt's fields) or by its outer headers."""
        if _eval(self.tree, pkt):
            return True
        e = pkt.encap
        if e is None:
            return False
        outer = PacketSummary(ethertype=0x0800, ip_src=e.src, ip_dst=e.dst, ip_proto=17,
                              sport=e.sport, dport=e.dport, ip_id=e.ip_id)  # fmt: skip
        return _eval(self.tree, outer)


def compile_filter(text: str | list[str] | None) -> Filter:
    """Parse FILTER (a string, or argv words joined by spaces)."""
    if isinstance(text, list):
        text = " ".join(text)
    text = (text or "").strip()
    return Filter(text, _Parser(text).parse())
