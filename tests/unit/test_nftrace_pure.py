"""Pure parts of --nftrace: filter -> nft matches, nft/iptables listings by
handle and position, trace message decoding."""

from __future__ import annotations

import struct

from vethtrace.collect.filter import compile_filter
from vethtrace.collect.nftrace_match import rules_for
from vethtrace.collect.nftrace_msg import TRACE_MSG_TYPE, decode
from vethtrace.collect.nftrace_rules import attach_iptables, parse_listing
from vethtrace.topology import nlmsg as nl


def test_filter_to_rules_per_family() -> None:
    f = compile_filter("icmp and host 10.0.0.2")
    assert rules_for(f, "ip") == [
        "ip protocol icmp ip saddr 10.0.0.2",
        "ip protocol icmp ip daddr 10.0.0.2",
    ]
    assert rules_for(compile_filter("arp"), "ip") == []
    assert rules_for(compile_filter("arp"), "bridge") == ["ether type arp"]
    assert rules_for(compile_filter(""), "ip") == [""]
    assert rules_for(compile_filter("not host 1.2.3.4"), "ip") == [
        "ip saddr != 1.2.3.4 ip daddr != 1.2.3.4"
    ]
    assert rules_for(compile_filter("tcp and dst port 80"), "ip") == [
        "ip protocol tcp meta l4proto { tcp, udp } th dport 80"
    ]


LISTING = """table ip filter { # handle 3
\tchain FORWARD { # handle 1
\t\ttype filter hook forward priority filter; policy drop;
\t\tcounter packets 3 bytes 252 jump DOCKER-USER # handle 3
\t\toifname "br0" ct state related,established counter packets 0 bytes 0 accept # handle 5
\t}

\tchain DOCKER-USER { # handle 2
\t\tcounter packets 0 bytes 0 return # handle 4
\t}
}
"""
IPT = """-P INPUT ACCEPT
-P FORWARD DROP
-N DOCKER-USER
-A FORWARD -j DOCKER-USER
-A FORWARD -o br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER-USER -j RETURN
"""


def test_listing_and_iptables_by_position() -> None:
    chains = parse_listing(LISTING)
    fwd = chains[("ip", "filter", "FORWARD")]
    assert fwd.hook == "forward"
    assert fwd.rules == {
        3: "counter jump DOCKER-USER",
        5: 'oifname "br0" ct state related,established counter accept',
    }
    assert attach_iptables(chains, "ip", "filter", IPT)
    assert fwd.iptables[5].startswith("-A FORWARD -o br0")
    assert chains[("ip", "filter", "DOCKER-USER")].iptables == {4: "-A DOCKER-USER -j RETURN"}
    # a count that differs (a rule added meanwhile): no iptables form is claimed
    again = parse_listing(LISTING)
    assert not attach_iptables(again, "ip", "filter", IPT + "-A DOCKER-USER -j DROP\n")
    assert again[("ip", "filter", "FORWARD")].iptables == {}


def _attr(t: int, payload: bytes) -> bytes:
    return nl.nla(t, payload)


def test_decode_trace_message() -> None:
    ip = bytes.fromhex("4500005400004000400100000a0000010a000002")
    icmp = bytes.fromhex("0800000012340001")
    verdict = _attr(1, struct.pack(">i", 0))  # NF_DROP
    body = (
        struct.pack("=BBH", 1, 0, 0)  # inet
        + _attr(1, b"f\0") + _attr(2, b"input\0") + _attr(3, struct.pack(">Q", 7))
        + _attr(4, struct.pack(">I", 3)) + _attr(5 | 0x8000, verdict)
        + _attr(6, struct.pack(">I", 99)) + _attr(8, ip) + _attr(9, icmp)
        + _attr(10, struct.pack(">I", 2))
    )  # fmt: skip
    msg = nl.NLMSG_HDR.pack(16 + len(body), TRACE_MSG_TYPE, 0, 0, 0) + body
    (t,) = decode(msg)
    assert (t.family, t.table, t.chain, t.handle, t.kind, t.verdict) == (
        "inet", "f", "input", 7, "rule", "drop",
    )  # fmt: skip
    assert t.trace_id == 99 and t.iif == 2
    assert t.packet is not None and t.packet.icmp_id == 0x1234 and t.packet.ip_dst == "10.0.0.2"
