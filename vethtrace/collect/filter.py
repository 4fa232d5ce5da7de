"""A pcap-filter subset compiled to a small jump program the BPF probes interpret.

Why not libpcap's BPF bytecode: our probes see an sk_buff, not a linear
packet buffer at a fixed offset, and decode the headers once into a small
struct (vethtrace/probes/vethtrace.h `struct vt_pkt`). The program tests
that struct's fields, libpcap-style: each instruction `(field & mask) ==
want`, then jump (forward only) to the next test or to ACCEPT/REJECT, in the
order the expression's short-circuits take, so traffic that does not match
costs a few steps. Why a program in a map and not C compiled in: the
probes are compiled once (at set-up, cached) and serve every filter; a new
filter is a map write, not a 1 s compile (`Filter.program_bytes`, written by
collect/bpf.py before anything is reported).

Supported (as tcpdump): `arp`, `ip`, `icmp`, `tcp`, `udp`, `[src|dst] host A`,
`[src|dst] net A/N`, `[src|dst] port N`, a bare address (= host), `tcp port N`
style protocol qualifiers, value lists inheriting the last qualifier
(`port 80 or 443`), `and`/`&&`, `or`/`||`, `not`/`!`, parentheses. `host`
matches ARP sender/target addresses too, like tcpdump. Anything else is a
UserError naming the unsupported part; so is a filter longer than MAX tests.

Tunnels: a VXLAN datagram (IPv4/UDP to a VXLAN port with a VXLAN header)
matches when its outer headers OR the frame it carries match, so
`icmp and host 10.244.1.2` follows a pod's ping into the tunnel and across
the underlay, and `udp port 4789` still selects the tunnel traffic itself.
The probes run the same program on each level (vethtrace.h, vt_skb_seen).

The tree also evaluates in Python (`Filter.matches(PacketSummary)`), which
sniffers reuse, and the program runs in Python too (`run`): the tests check
the two agree. (A little over the ~400-line guide: parser, program compiler
and both evaluators stay together, since each must follow the others.)
"""

from __future__ import annotations

import ipaddress
import re
import struct
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


# --- the filter as a jump program (what the probes run) -------------------------
#
# One instruction: take field `field` of struct vt_pkt, test
# (value & mask) == want, go to jt when true, jf when false. Targets are
# instruction indexes, always forward, or ACCEPT/REJECT, so the probes' loop
# over at most MAX steps ends. The field ids, ACCEPT/REJECT and MAX reach the C
# as -D flags (DEFINES): this module is their one home.

FIELDS = ("ethertype", "ip_proto", "saddr", "daddr", "sport", "dport", "flags")
MAX = 64  # instructions; the probes' loop bound (verifier time grows with it)
ACCEPT, REJECT = 0xFFFE, 0xFFFF
INSN = struct.Struct("<BBHHHII")  # field, pad, jt, jf, pad, mask, want (struct vt_insn)
L3_FLAG, L4_FLAG = 2, 4  # VT_PKT_L3, VT_PKT_L4 in vethtrace.h: addresses, ports valid
DEFINES = {"VT_FLT_MAX": MAX, "VT_FLT_ACCEPT": ACCEPT, "VT_FLT_REJECT": REJECT,
           **{f"VT_FLD_{name.upper()}": i for i, name in enumerate(FIELDS)}}  # fmt: skip


@dataclass(frozen=True)
class Insn:
    field: int
    jt: int
    jf: int
    mask: int
    want: int


def _eq(field: str, want: int, mask: int = 0xFFFFFFFF) -> Node:
    return Node("test", (FIELDS.index(field), mask, want & mask))


def _any(*nodes: Node) -> Node:
    out = nodes[0]
    for n in nodes[1:]:
        out = Node("or", (out, n))
    return out


def _all(*nodes: Node) -> Node:
    out = nodes[0]
    for n in nodes[1:]:
        out = Node("and", (out, n))
    return out


def _lower(node: Node) -> Node:
    """The parse tree in terms of field tests, in the order (and so with the
    short-circuits) the C expression had: ethertype first, then the rest."""
    op, a = node.op, node.args
    if op == "true":
        return Node("test", (0, 0, 0))  # (x & 0) == 0: always
    if op in ("and", "or"):
        return Node(op, (_lower(a[0]), _lower(a[1])))
    if op == "not":
        return Node("not", (_lower(a[0]),))
    ip = _eq("ethertype", 0x0800)
    if op == "proto":
        if a[0] == "arp":
            return _eq("ethertype", 0x0806)
        if a[0] == "ip":
            return ip
        return _all(ip, _eq("ip_proto", {"icmp": 1, "tcp": 6, "udp": 17}[a[0]]))
    direction = a[0]
    if op == "port":
        names = {"src": ["sport"], "dst": ["dport"], None: ["sport", "dport"]}[direction]
        l4 = _eq("flags", L4_FLAG, L4_FLAG)
        tcp_udp = _any(_eq("ip_proto", 6), _eq("ip_proto", 17))
        return _all(ip, l4, tcp_udp, _any(*(_eq(f, a[1]) for f in names)))
    names = {"src": ["saddr"], "dst": ["daddr"], None: ["saddr", "daddr"]}[direction]
    addr_ok = _any(ip, _eq("ethertype", 0x0806))
    if op == "host":
        return _all(addr_ok, _any(*(_eq(f, _le32(a[1])) for f in names)))
    if op == "net":
        mask = _le32(str(ipaddress.IPv4Network(f"0.0.0.0/{a[2]}").netmask))
        return _all(addr_ok, _any(*(_eq(f, _le32(a[1]), mask) for f in names)))
    raise AssertionError(op)


class _Emitter:
    """Code for a lowered tree: `emit(node, t, f)` appends instructions that go
    to t when node is true, f when false. The second operand of and/or starts
    at a label (a negative number until resolved); everything it jumps to comes
    later, so every jump is forward."""

    def __init__(self) -> None:
        self.code: list[list[int]] = []
        self.at: dict[int, int] = {}

    def emit(self, node: Node, t: int, f: int) -> None:
        op, a = node.op, node.args
        if op == "test":
            field, mask, want = a
            self.code.append([field, t, f, mask, want])
        elif op == "not":
            self.emit(a[0], f, t)
        else:
            label = -len(self.at) - 1
            self.at[label] = -1
            self.emit(a[0], *((label, f) if op == "and" else (t, label)))
            self.at[label] = len(self.code)
            self.emit(a[1], t, f)

    def resolved(self) -> tuple[Insn, ...]:
        out = []
        for i, (field, t, f, mask, want) in enumerate(self.code):
            t, f = self.at.get(t, t), self.at.get(f, f)
            assert t > i and f > i, "jumps go forward"
            out.append(Insn(field, t, f, mask, want))
        return tuple(out)


def program(tree: Node) -> tuple[Insn, ...]:
    """The jump program for a parse tree (see Filter.program)."""
    em = _Emitter()
    em.emit(_lower(tree), ACCEPT, REJECT)
    return em.resolved()


def run(prog: tuple[Insn, ...], fields: tuple[int, ...]) -> bool:
    """The probes' interpreter (vethtrace.h, vt_run) in Python: `fields` are
    struct vt_pkt's values in FIELDS order."""
    pc = 0
    for _ in range(MAX):
        if pc >= len(prog):
            break
        ins = prog[pc]
        pc = ins.jt if fields[ins.field] & ins.mask == ins.want else ins.jf
    return pc == ACCEPT


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

    @property
    def program(self) -> tuple[Insn, ...]:
        """The jump program the probes run (vethtrace.h, vt_run); a filter
        longer than MAX instructions is a UserError."""
        prog = program(self.tree)
        if len(prog) > MAX:
            raise UserError(
                f"filter {self.text!r} is too long for the probes: {len(prog)} tests, "
                f"at most {MAX}"
            )
        return prog

    def program_bytes(self) -> bytes:
        """The program as the probes' map holds it (struct vt_insn[MAX])."""
        prog = self.program
        raw = b"".join(INSN.pack(i.field, 0, i.jt, i.jf, 0, i.mask, i.want) for i in prog)
        return raw + bytes(INSN.size * (MAX - len(prog)))

    @property
    def matches_empty(self) -> bool:
        """Whether the program accepts a packet with nothing decoded (struct
        vt_pkt all zero). When not, the probes drop skbs without a protocol
        before any further read."""
        return run(self.program, (0,) * len(FIELDS))

    def keeps_neighbour(self, family: int, key: bytes) -> bool:
        """A neighbour event is matched as an ARP packet about its address
        (sender = target = the address; IPv6 entries have none): `arp`,
        `host A`, `net A/N` keep it, `icmp`, `tcp`, `port N` drop it."""
        addr = int.from_bytes(key[:4], "little") if family == 2 else 0  # AF_INET
        return run(self.program, (0x0806, 0, addr, addr, 0, 0, L3_FLAG))

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
