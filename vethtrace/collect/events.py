"""The event contract between the probes and Python: point ids and names,
frame flags, the compiled layout of struct vt_event and how a record becomes
a model.ProbeEvent (what each field means: collect/bpf.py's docstring).

struct vt_event is defined once, in vethtrace/probes/vethtrace.h, and Python does not
restate it. The point ids (VT_P_*) and frame flags (VT_PKT_*) are parsed from
that header here, once (`contract()`); a point's name is its define's in
lower case (VT_P_NET_DEV_XMIT: "net_dev_xmit"). The layout is the one bcc compiled: the
ctypes class bcc builds for the vt_layout map's leaf, flattened by
`Layout.spec` into plain data (which the probe cache saves beside the
programs) and turned by `Layout` into struct.Struct readers. `Decoder` turns
records into events, with the caches that keep a flood cheap.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import re
import socket
import struct
from collections.abc import Callable
from typing import Any

from vethtrace.collect.kallsyms import Kallsyms
from vethtrace.collect.kfacts import drop_reason_name
from vethtrace.collect.ringbuf import HEADER, record_stride
from vethtrace.collect.source import HEADER_FILE
from vethtrace.model import Encap, NeighChange, PacketSummary, ProbeEvent, nud_name


def header_defines(text: str) -> dict[str, int]:
    """Every `#define VT_<NAME> <decimal>` of the header text: name -> value."""
    return {n: int(v) for n, v in re.findall(r"^#define (VT_\w+) (\d+)\b", text, re.M)}


class Contract:
    """What Python takes from the header's defines: point ids and names, the
    kinds of point, the frame flags (struct vt_pkt.flags)."""

    def __init__(self, text: str) -> None:
        defines = header_defines(text)
        # point id -> name, as the probes emit them
        self.points = {v: n.removeprefix("VT_P_").lower() for n, v in defines.items()
                       if n.startswith("VT_P_")}  # fmt: skip
        self.ids = {name: i for i, name in self.points.items()}
        self.net_dev_xmit = self.ids["net_dev_xmit"]  # carries the driver's rc
        self.kfree_skb = self.ids["kfree_skb"]  # carries a drop reason
        self.br_fdb_update = self.ids["br_fdb_update"]
        self.neigh = frozenset(i for i, n in self.points.items() if n.startswith("neigh_"))
        # neighbour points whose rc is the kernel's error for the operation
        self.neigh_err = frozenset(
            self.ids[n] for n in ("neigh_update_done", "neigh_event_send_done")
        )
        # events whose record carries more than the skb fields (read in full)
        self.detail = self.neigh | {self.br_fdb_update}
        self.pkt_eth, self.pkt_l3, self.pkt_l4, self.pkt_vxlan = (
            defines[f"VT_PKT_{n}"] for n in ("ETH", "L3", "L4", "VXLAN")
        )


@functools.cache
def contract() -> Contract:
    """The header's contract, read on first use (not at import: a missing
    vethtrace/probes/ directory then fails where the collector is made, like a bad filter)."""
    return Contract(HEADER_FILE.read_text())


class Layout:
    """struct vt_event as bcc compiled it (from the ctypes class bcc built), turned
    into struct.Struct readers, ~10x faster than ctypes attribute access. `hot`
    reads the fields every event needs, with the packet headers as one bytes
    value (the decode cache's key); `ring` the same behind a ring buffer
    record's header, padded to the record stride, for `iter_unpack` over a
    batch; `pkt` decodes those header bytes; `full` reads everything (neighbour
    and fdb events). Nested structs are flattened as <outer>_<field>."""

    HOT = ("ts", "skb", "head", "location", "netns", "ifindex", "len", "reason", "rc", "cpu",
           "point", "cloned", "ifname", "pkt")  # fmt: skip

    def __init__(self, spec: dict[str, Any]) -> None:
        fields = [(off, name, code) for off, name, code in spec["fields"]]
        self.size = int(spec["size"])
        stride = record_stride(self.size)
        pkt_off, pkt_size = spec["pkt"]
        hot = [f for f in fields if f[1] in self.HOT] + [(pkt_off, "pkt", f"{pkt_size}s")]
        hot.sort()
        if tuple(f[1] for f in hot) != self.HOT:  # Decoder.event unpacks in this order
            raise RuntimeError(f"struct vt_event changed: hot fields {[f[1] for f in hot]}")
        self.hot = struct.Struct(_format(hot, self.size)).unpack_from
        header = (0, "header", "I")  # u32 length + flags; the page offset is skipped
        self.ring = struct.Struct(_format([header, *_shift(hot, HEADER)], stride))
        in_pkt = [(o - pkt_off, n, c) for o, n, c in fields if pkt_off <= o < pkt_off + pkt_size]
        self.pkt = _Reader(in_pkt, "VtPkt")
        self.full = _Reader(fields, "VtEvent")

    @staticmethod
    def spec(cls: Any) -> dict[str, Any]:
        """The compiled struct (bcc's ctypes class) as plain data: what the
        probe cache stores beside the programs."""
        fields: list[tuple[int, str, str]] = []
        _flatten(cls, 0, "", fields)
        # the packet block: pkt, then (VXLAN) inner and vni, one bytes value
        end = cls.vni.offset + cls.vni.size
        return {
            "size": ctypes.sizeof(cls),
            "fields": sorted(fields),
            "pkt": [cls.pkt.offset, end - cls.pkt.offset],
        }


class _Reader:
    def __init__(self, fields: list[tuple[int, str, str]], name: str) -> None:
        self._unpack = struct.Struct(_format(fields)).unpack_from
        tuple_cls: Any = collections.namedtuple(name, [f[1] for f in fields])  # type: ignore[misc]
        self._make = tuple_cls._make

    def __call__(self, buf: Any, off: int = 0) -> Any:
        return self._make(self._unpack(buf, off))


def _format(fields: list[tuple[int, str, str]], size: int | None = None) -> str:
    """struct format for (offset, name, code) fields sorted by offset, padded to `size`."""
    fmt, pos = "<", 0
    for off, _name, code in fields:
        if off > pos:
            fmt += f"{off - pos}x"
        fmt += code
        pos = off + struct.calcsize("<" + code)
    if size is not None and size > pos:
        fmt += f"{size - pos}x"
    return fmt


def _shift(fields: list[tuple[int, str, str]], by: int) -> list[tuple[int, str, str]]:
    return [(off + by, name, code) for off, name, code in fields]


def _flatten(cls: Any, base: int, prefix: str, out: list[tuple[int, str, str]]) -> None:
    for name, ctype in cls._fields_:
        if name.startswith("__pad"):  # bcc's explicit padding
            continue
        off = base + getattr(cls, name).offset
        if isinstance(ctype, type) and issubclass(ctype, ctypes.Structure):
            _flatten(ctype, off, f"{prefix}{name}_", out)
        elif isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
            out.append((off, prefix + name, f"{ctypes.sizeof(ctype)}s"))
        else:
            size = ctypes.sizeof(ctype)
            signed = ctype(-1).value == -1 if size > 0 else False
            code = {1: "b", 2: "h", 4: "i", 8: "q"}[size]
            out.append((off, prefix + name, code if signed else code.upper()))


@functools.lru_cache(maxsize=4096)
def _ip(v: int) -> str:
    return socket.inet_ntoa(v.to_bytes(4, "little"))


@functools.lru_cache(maxsize=4096)
def _mac(b: bytes) -> str:
    return b.hex(":")


def _packet(r: Any, c: Contract) -> PacketSummary:
    """The event's packet. A VXLAN datagram is described by the frame it
    carries (what the user sent: correlate joins it to the same frame before
    and after the tunnel), its outer headers kept in `encap`."""
    if not r.pkt_flags & c.pkt_vxlan:
        return _headers(r, "pkt_", c)
    s = _headers(r, "inner_", c)
    s.encap = Encap(
        kind="vxlan",
        vni=r.vni,
        src=_ip(r.pkt_saddr),
        dst=_ip(r.pkt_daddr),
        sport=r.pkt_sport,
        dport=r.pkt_dport,
        ip_id=r.pkt_ip_id,
    )
    return s


def _headers(r: Any, pre: str, c: Contract) -> PacketSummary:
    """One level of headers (struct vt_pkt) from the fields named pre + name."""
    def f(name: str) -> Any:
        return getattr(r, pre + name)

    s = PacketSummary()
    flags = f("flags")
    if flags & c.pkt_eth:
        s.eth_src = _mac(f("eth_src"))
        s.eth_dst = _mac(f("eth_dst"))
    et = s.ethertype = f("ethertype")
    if et == 0x0806:
        s.arp_op = f("arp_op")
        s.arp_sha = _mac(f("arp_sha"))
        s.arp_spa = _ip(f("saddr"))
        s.arp_tha = _mac(f("arp_tha"))
        s.arp_tpa = _ip(f("daddr"))
    elif et == 0x0800:
        s.ip_src, s.ip_dst, s.ip_proto = _ip(f("saddr")), _ip(f("daddr")), f("ip_proto")
        s.ip_id = f("ip_id")
        if flags & c.pkt_l4:
            if s.ip_proto == 1:
                s.icmp_type, s.icmp_code = f("icmp_type"), f("icmp_code")
                s.icmp_id, s.icmp_seq = f("icmp_id"), f("icmp_seq")
            else:
                s.sport, s.dport = f("sport"), f("dport")
    return s


_MISSING: Any = object()


class Decoder:
    """Records of one compiled layout -> ProbeEvents. Interface names, packet
    headers and drop reason names are decoded once and looked up after.

    `keep_neigh(family, key)`: whether the packet filter keeps a neighbour
    event (the probes report them all: they are rare, and the filter's loop
    in each of the five neighbour programs cost more verification time than
    every other probe together); `event` returns None for one it does not
    keep and counts it in `dropped`."""

    def __init__(
        self,
        layout: Layout,
        reasons: dict[int, str],
        subsys: dict[int, str],
        kallsyms: Kallsyms,
        keep_neigh: Callable[[int, bytes], bool] | None = None,
    ) -> None:
        self.keep_neigh = keep_neigh
        self.dropped = 0
        self.layout = layout
        self.contract = contract()
        self._reasons = reasons
        self._subsys = subsys
        self._kallsyms = kallsyms
        self._names_cache: dict[bytes, str] = {}
        self._pkt_cache: dict[bytes, PacketSummary | None] = {}
        self._drop_names: dict[int, str] = {}

    def ifname(self, raw: bytes) -> str:
        name = self._names_cache.get(raw)
        if name is None:
            name = raw.split(b"\0", 1)[0].decode(errors="replace")
            self._names_cache[raw] = name
        return name

    def packet(self, raw: bytes) -> PacketSummary | None:
        """Decode header bytes not seen recently. The result is shared by every
        event with identical bytes (a packet seen at ten points, a flow's
        packets): treat it as read-only."""
        cache = self._pkt_cache
        if len(cache) > 8192:
            cache.clear()
        r = self.layout.pkt(raw)
        pkt = cache[raw] = _packet(r, self.contract) if r.pkt_flags else None
        return pkt

    def event(self, row: Any, buf: Any, off: int) -> ProbeEvent | None:
        """One event from a ring record's row (header, then the `Layout.HOT`
        fields); `buf` at `off` holds the whole record, read only for neighbour
        and fdb events. The hot path of a flood: every name is a local, every
        repeated conversion a dict lookup."""
        (_hdr, ts, skb, head, location, netns, ifindex, length, reason, rc, cpu, point, cloned,
         name, pkt) = row  # fmt: skip
        ifname = self._names_cache.get(name)
        if ifname is None:
            ifname = self.ifname(name)
        packet = self._pkt_cache.get(pkt, _MISSING)
        if packet is _MISSING:
            packet = self.packet(pkt)
        c = self.contract
        drop = None
        if point == c.kfree_skb:
            drop = self._drop_names.get(reason)
            if drop is None:
                drop = self._drop_names[reason] = drop_reason_name(
                    reason, self._reasons, self._subsys
                )
        ev = ProbeEvent(
            ts,
            c.points.get(point) or f"point{point}",
            netns,
            ifindex,
            ifname,
            skb,
            head,
            length,
            packet,
            drop,
            self._kallsyms.name(location) if location else None,
            None,
            cloned != 0,
            cpu,
        )
        if point not in c.detail:
            if point == c.net_dev_xmit:
                ev.extra["rc"] = rc
            return ev
        r = self.layout.full(buf, off)
        if point in c.neigh:
            key = r.key
            if self.keep_neigh is not None and not self.keep_neigh(r.family, key):
                self.dropped += 1
                return None
            addr = (
                socket.inet_ntop(socket.AF_INET6, key)
                if r.family == socket.AF_INET6
                else socket.inet_ntoa(key[:4])
            )
            lladdr = _mac(r.lladdr)
            ev.neigh = NeighChange(
                address=addr,
                old_state=nud_name(r.old_state),
                new_state=nud_name(r.new_state),
                lladdr=None if lladdr == "00:00:00:00:00:00" else lladdr,
                err=rc if point in c.neigh_err else None,
            )
        else:  # br_fdb_update
            ev.extra.update(
                port_ifindex=r.ifindex2,
                port=self.ifname(r.ifname2),
                mac=_mac(r.lladdr),
                vid=r.vid,
            )
        return ev
