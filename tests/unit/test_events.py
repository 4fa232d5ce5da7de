"""The event contract (collect/events.py) against probes/vethtrace.h: the point
ids Python knows are exactly the ones the probes emit, and records laid out as
the header's struct decode by its VT_PKT_* flags and point kinds.

Records are built through ctypes classes made from the header's own struct
text (as bcc makes one from the compiled type), so nothing here restates the
layout."""

from __future__ import annotations

import ctypes
import re
import socket
from pathlib import Path
from typing import Any

from vethtrace.collect import events, plan, source
from vethtrace.collect.kallsyms import Kallsyms
from vethtrace.model import ProbeEvent

C_TYPES = {"u8": ctypes.c_uint8, "u16": ctypes.c_uint16, "u32": ctypes.c_uint32,
           "u64": ctypes.c_uint64, "s32": ctypes.c_int32, "char": ctypes.c_char}  # fmt: skip
MEMBER = re.compile(r"^\s*(?:struct )?(\w+) (\w+)(?:\[(\d+)\])?;", re.M)


def _structs() -> dict[str, Any]:
    """ctypes classes for the header's structs made of plain members."""
    out: dict[str, Any] = {}
    text = source.HEADER_FILE.read_text()
    for name, body in re.findall(r"^struct (\w+) \{\n(.*?)^\};", text, re.M | re.S):
        fields = []
        for typ, member, count in MEMBER.findall(body):
            ctype = out.get(typ) or C_TYPES.get(typ)
            if ctype is None:
                break  # a struct of the BPF side only (vt_frame, vt_txstack, ...)
            fields.append((member, ctype * int(count) if count else ctype))
        else:
            out[name] = type(name, (ctypes.Structure,), {"_fields_": fields})
    return out


EVENT = _structs()["vt_event"]
C = events.contract()


def _decoder(tmp_path: Path) -> events.Decoder:
    syms = tmp_path / "kallsyms"
    syms.write_text("ffffffff81000000 T kfree_caller\n")
    layout = events.Layout(events.Layout.spec(EVENT))
    reasons, subsys = {2: "NOT_SPECIFIED"}, {1: "MAC80211_UNUSABLE"}
    return events.Decoder(layout, reasons, subsys, Kallsyms(str(syms)))


def _decode(dec: events.Decoder, rec: Any) -> ProbeEvent:
    buf = bytes(rec)
    return dec.event((0, *dec.layout.hot(buf)), buf, 0)


def _echo(flags: int) -> Any:
    e = EVENT(ts=5, skb=0x10, head=0x20, point=C.ids["netif_receive_skb"])
    e.ifname = b"veth0"
    p = e.pkt
    p.eth_src[:] = list(b"\x02\0\0\0\0\x01")
    p.ethertype, p.ip_proto, p.icmp_type, p.icmp_id, p.icmp_seq = 0x0800, 1, 8, 77, 3
    p.saddr = int.from_bytes(socket.inet_aton("10.0.0.1"), "little")
    p.daddr = int.from_bytes(socket.inet_aton("10.0.0.2"), "little")
    p.flags = flags
    return e


def test_point_ids_are_the_ones_probes_emit() -> None:
    defined = set(re.findall(r"#define VT_P_(\w+) \d+", source.HEADER_FILE.read_text()))
    programs = [f.read_text() for f in source.PROBES_DIR.glob("*.c")]
    used = {m for text in programs for m in re.findall(r"VT_P_(\w+)", text)}
    assert defined == used
    assert set(C.points.values()) == {n.lower() for n in defined}
    # each point is a tracepoint or a kernel function the plan attaches
    hooks = {h for tps, funcs, _area in plan.POINTS.values() for h in (*tps, *funcs)}
    assert set(C.points.values()) == hooks


def test_packet_fields_follow_the_frame_flags(tmp_path: Path) -> None:
    dec = _decoder(tmp_path)
    l3 = _decode(dec, _echo(C.pkt_l3)).packet
    assert l3 is not None and l3.ip_dst == "10.0.0.2" and l3.ip_proto == 1
    assert l3.eth_src is None and l3.icmp_type is None
    pkt = _decode(dec, _echo(C.pkt_eth | C.pkt_l3 | C.pkt_l4)).packet
    assert pkt is not None and pkt.eth_src == "02:00:00:00:00:01"
    assert (pkt.kind, pkt.icmp_id, pkt.icmp_seq) == ("echo", 77, 3)
    assert _decode(dec, _echo(0)).packet is None


def test_what_each_point_carries(tmp_path: Path) -> None:
    dec = _decoder(tmp_path)
    assert _decode(dec, EVENT(point=C.net_dev_xmit, rc=-1)).extra == {"rc": -1}
    drop = _decode(dec, EVENT(point=C.kfree_skb, reason=2, location=0xFFFFFFFF81000010))
    assert (drop.point, drop.drop_reason, drop.location) == (
        "kfree_skb", "NOT_SPECIFIED", "kfree_caller")  # fmt: skip
    sub = _decode(dec, EVENT(point=C.kfree_skb, reason=(1 << 16) | 5))
    assert sub.drop_reason == "MAC80211_UNUSABLE:5"
    for i in C.neigh:
        rec = EVENT(point=i, family=socket.AF_INET, rc=-11, old_state=0xFF, new_state=0x20)
        rec.key[:4] = list(socket.inet_aton("10.0.0.9"))
        ev = _decode(dec, rec)
        assert ev.neigh is not None and ev.point.startswith("neigh_")
        n = ev.neigh
        assert (n.address, n.old_state, n.new_state, n.lladdr) == ("10.0.0.9", None, "FAILED", None)
        reports_err = ev.point in ("neigh_update_done", "neigh_event_send_done")
        assert n.err == (-11 if reports_err else None)
    fdb = EVENT(point=C.br_fdb_update, ifindex2=4, vid=0)
    fdb.ifname2 = b"veth0"
    fdb.lladdr[:] = list(b"\x02\0\0\0\0\x07")
    assert _decode(dec, fdb).extra == {
        "port_ifindex": 4, "port": "veth0", "mac": "02:00:00:00:00:07", "vid": 0}  # fmt: skip
