"""Decode the kernel's nftables trace messages (NFT_MSG_TRACE on the
NFNLGRP_NFTRACE netlink group) into NftraceEvent fields.

Why our own decoder instead of `nft monitor trace`: the message is a flat
list of a dozen attributes (linux/netfilter/nf_tables.h, enum
nft_trace_attributes), and reading it ourselves gives the packet's own header
bytes, which is how a trace event joins the ping's packet (ICMP id/seq), with
no child process per namespace and no text to parse. Pure: bytes in, values
out, so recorded messages decode without root.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from vethtrace.model import PacketSummary
from vethtrace.topology import nlmsg as nl

NETLINK_NETFILTER = 12
NFNLGRP_NFTRACE = 9
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_TRACE = 17
TRACE_MSG_TYPE = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE

# enum nft_trace_attributes
(
    A_TABLE,
    A_CHAIN,
    A_RULE_HANDLE,
    A_TYPE,
    A_VERDICT,
    A_ID,
    A_LL_HEADER,
    A_NETWORK_HEADER,
    A_TRANSPORT_HEADER,
    A_IIF,
    A_IIFTYPE,
    A_OIF,
    A_OIFTYPE,
    A_MARK,
    A_NFPROTO,
    A_POLICY,
) = range(1, 17)
NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 1, 2

TRACE_TYPES = {1: "policy", 2: "return", 3: "rule"}
# netfilter's NF_* verdicts and nf_tables' NFT_* ones (negative)
VERDICTS = {
    0: "drop",
    1: "accept",
    2: "stolen",
    3: "queue",
    4: "repeat",
    -1: "continue",
    -2: "break",
    -3: "jump",
    -4: "goto",
    -5: "return",
}
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
_BE16 = struct.Struct(">H").unpack_from
_BE32U = struct.Struct(">I").unpack_from
_BE64 = struct.Struct(">Q").unpack_from


@dataclass
class RawTrace:
    """One decoded trace message, before names and rule text are attached."""

    family: str
    table: str
    chain: str
    kind: str
    verdict: str
    trace_id: int
    handle: int | None
    target: str | None
    iif: int | None
    oif: int | None
    nfproto: str | None
    packet: PacketSummary | None


def decode(data: bytes) -> list[RawTrace]:
    """Every trace message in one netlink read (other messages are ignored)."""
    out: list[RawTrace] = []
    for mtype, _flags, off, end in nl.messages(data):
        if mtype != TRACE_MSG_TYPE or off + nl.NFGENMSG.size > end:
            continue
        family = FAMILIES.get(data[off], str(data[off]))
        a = nl.attrs(data, off + nl.NFGENMSG.size, end)
        kind = TRACE_TYPES.get(_u32(data, a, A_TYPE) or 0, "unknown")
        verdict, target = "continue", None
        if A_VERDICT in a:
            v = nl.nested(data, a[A_VERDICT])
            if NFTA_VERDICT_CODE in v:
                code = struct.unpack_from(">i", data, v[NFTA_VERDICT_CODE])[0]
                verdict = VERDICTS.get(code & 0xFF if code >= 0 else code, str(code))
            if NFTA_VERDICT_CHAIN in v:
                target = nl.string(data, v[NFTA_VERDICT_CHAIN])
        elif kind == "policy" and A_POLICY in a:
            verdict = VERDICTS.get(_u32(data, a, A_POLICY) or 0, "?")
        nfproto = _u32(data, a, A_NFPROTO)
        out.append(
            RawTrace(
                family=family,
                table=nl.string(data, a[A_TABLE]) if A_TABLE in a else "",
                chain=nl.string(data, a[A_CHAIN]) if A_CHAIN in a else "",
                kind=kind,
                verdict=verdict,
                trace_id=_u32(data, a, A_ID) or 0,
                handle=_BE64(data, a[A_RULE_HANDLE])[0] if A_RULE_HANDLE in a else None,
                target=target,
                iif=_u32(data, a, A_IIF),
                oif=_u32(data, a, A_OIF),
                nfproto=FAMILIES.get(nfproto) if nfproto is not None else None,
                packet=packet(
                    nl.payload(data, a[A_LL_HEADER]) if A_LL_HEADER in a else b"",
                    nl.payload(data, a[A_NETWORK_HEADER]) if A_NETWORK_HEADER in a else b"",
                    nl.payload(data, a[A_TRANSPORT_HEADER]) if A_TRANSPORT_HEADER in a else b"",
                ),
            )
        )
    return out


def _u32(data: bytes, a: dict[int, int], attr: int) -> int | None:
    return _BE32U(data, a[attr])[0] if attr in a else None


def packet(ll: bytes, network: bytes, transport: bytes) -> PacketSummary | None:
    """The headers the kernel copied into the event (at most 20/40/20 bytes of
    link, network and transport header), as the probes would summarise them."""
    pkt = PacketSummary()
    if len(ll) >= 14:
        pkt.eth_dst, pkt.eth_src = ll[0:6].hex(":"), ll[6:12].hex(":")
        pkt.ethertype = _BE16(ll, 12)[0]
    if len(network) >= 20 and network[0] >> 4 == 4:
        pkt.ethertype = pkt.ethertype or 0x0800
        ihl = (network[0] & 0xF) * 4
        pkt.ip_id = _BE16(network, 4)[0]
        pkt.ip_proto = network[9]
        pkt.ip_src = socket.inet_ntoa(network[12:16])
        pkt.ip_dst = socket.inet_ntoa(network[16:20])
        if not transport and len(network) > ihl:
            transport = network[ihl:]
        _transport(pkt, transport)
    elif len(network) >= 28 and pkt.ethertype == 0x0806:
        pkt.arp_op = _BE16(network, 6)[0]
        pkt.arp_sha, pkt.arp_spa = network[8:14].hex(":"), socket.inet_ntoa(network[14:18])
        pkt.arp_tha, pkt.arp_tpa = network[18:24].hex(":"), socket.inet_ntoa(network[24:28])
    if pkt.ethertype is None and pkt.ip_src is None:
        return None
    return pkt


def _transport(pkt: PacketSummary, th: bytes) -> None:
    if pkt.ip_proto == 1 and len(th) >= 8:
        pkt.icmp_type, pkt.icmp_code = th[0], th[1]
        if pkt.icmp_type in (0, 8):
            pkt.icmp_id, pkt.icmp_seq = _BE16(th, 4)[0], _BE16(th, 6)[0]
    elif pkt.ip_proto in (6, 17) and len(th) >= 4:
        pkt.sport, pkt.dport = _BE16(th, 0)[0], _BE16(th, 2)[0]
