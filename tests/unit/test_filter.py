"""The pcap-filter subset: parsing, errors, Python evaluation, and the C it emits
(evaluated here by a C compiler against the same packets, so the BPF-side
expression and the Python one are checked to agree)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vethtrace.collect.filter import compile_filter
from vethtrace.errors import UserError
from vethtrace.model import PacketSummary

ARP_REQ = PacketSummary(ethertype=0x0806, arp_op=1, arp_spa="10.0.0.1", arp_tpa="10.0.0.2")
ECHO = PacketSummary(
    ethertype=0x0800, ip_src="10.0.0.1", ip_dst="10.0.0.2", ip_proto=1,
    icmp_type=8, icmp_code=0, icmp_id=7, icmp_seq=1,
)  # fmt: skip
TCP = PacketSummary(ethertype=0x0800, ip_src="10.1.2.3", ip_dst="192.168.1.9", ip_proto=6,
                    sport=40000, dport=5201)  # fmt: skip
UDP = PacketSummary(ethertype=0x0800, ip_src="192.168.1.9", ip_dst="10.1.2.3", ip_proto=17,
                    sport=53, dport=33000)  # fmt: skip
IPV6 = PacketSummary(ethertype=0x86DD)
PACKETS = {"arp": ARP_REQ, "echo": ECHO, "tcp": TCP, "udp": UDP, "ipv6": IPV6}

CASES = [
    ("", {"arp", "echo", "tcp", "udp", "ipv6"}),
    ("arp", {"arp"}),
    ("ip", {"echo", "tcp", "udp"}),
    ("icmp", {"echo"}),
    ("tcp or udp", {"tcp", "udp"}),
    ("host 10.0.0.2", {"arp", "echo"}),
    ("src host 10.0.0.1", {"arp", "echo"}),
    ("dst host 10.0.0.1", set()),
    ("net 10.0.0.0/8", {"arp", "echo", "tcp", "udp"}),
    ("src net 192.168.0.0/16", {"udp"}),
    ("port 5201", {"tcp"}),
    ("dst port 5201 or src port 53", {"tcp", "udp"}),
    ("port 80 or 53", {"udp"}),  # value list inherits "port"
    ("tcp port 53", set()),
    ("udp port 53", {"udp"}),
    ("not arp", {"echo", "tcp", "udp", "ipv6"}),
    ("! (tcp || udp) && ip", {"echo"}),
    ("icmp and not host 10.9.9.9", {"echo"}),
    ("10.0.0.1", {"arp", "echo"}),  # bare address = host
    ("arp or (icmp and dst host 10.0.0.2)", {"arp", "echo"}),
    ("ip host 10.0.0.2", {"echo"}),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_python_evaluation(text: str, expected: set[str]) -> None:
    flt = compile_filter(text)
    got = {name for name, pkt in PACKETS.items() if flt.matches(pkt)}
    assert got == expected


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("ip6", "ip6"),
        ("vlan 10", "vlan"),
        ("ether host aa:bb:cc:dd:ee:ff", "ether"),
        ("host foo", "foo"),
        ("port 70000", "70000"),
        ("net 10.0.0.0/40", "10.0.0.0/40"),
        ("(arp", ")"),
        ("arp)", ")"),
        ("arp and", "ends too early"),
        ("src", "src"),
        ("greater 100", "greater"),
    ],
)
def test_unsupported_syntax_names_the_part(text: str, part: str) -> None:
    with pytest.raises(UserError) as exc:
        compile_filter(text)
    assert part in str(exc.value)


def test_argv_words_are_joined() -> None:
    assert compile_filter(["icmp", "and", "host", "10.0.0.2"]).matches(ECHO)
    assert not compile_filter([]).active


C_HARNESS = r"""
#include <stdint.h>
#include <stdio.h>
#include <string.h>
typedef uint8_t u8; typedef uint16_t u16; typedef uint32_t u32;
#define VT_PKT_L4 4
struct vt_pkt { u16 ethertype; u8 ip_proto; u8 flags; u32 saddr, daddr; u16 sport, dport; };
static u32 ip(const char *s) { unsigned a, b, c, d; sscanf(s, "%u.%u.%u.%u", &a, &b, &c, &d);
    u8 x[4] = {a, b, c, d}; u32 v; memcpy(&v, x, 4); return v; }
#define F(p) (%s)
int main(int argc, char **argv) {
    struct vt_pkt q = {0};
    q.ethertype = atoi(argv[1]); q.ip_proto = atoi(argv[2]); q.flags = atoi(argv[3]);
    q.saddr = ip(argv[4]); q.daddr = ip(argv[5]); q.sport = atoi(argv[6]); q.dport = atoi(argv[7]);
    struct vt_pkt *p = &q;
    return F(p) ? 0 : 1;
}
"""


@pytest.mark.skipif(not shutil.which("cc"), reason="needs a C compiler")
@pytest.mark.parametrize(("text", "expected"), CASES)
def test_emitted_c_agrees(text: str, expected: set[str], tmp_path: Path) -> None:
    """Compile the generated expression with cc (little-endian host, like BPF
    on x86/arm64) and run it on the same packets as the Python evaluator."""
    src = tmp_path / "f.c"
    src.write_text("#include <stdlib.h>\n" + C_HARNESS.replace("%s", compile_filter(text).to_c()))
    exe = tmp_path / "f"
    subprocess.run(["cc", "-O0", "-o", str(exe), str(src)], check=True)
    got = set()
    for name, pkt in PACKETS.items():
        src_ip = pkt.arp_spa or pkt.ip_src or "0.0.0.0"
        dst_ip = pkt.arp_tpa or pkt.ip_dst or "0.0.0.0"
        l4 = 4 if pkt.sport is not None or pkt.icmp_type is not None else 0
        args = [str(pkt.ethertype or 0), str(pkt.ip_proto or 0), str(l4), src_ip, dst_ip,
                str(pkt.sport or 0), str(pkt.dport or 0)]  # fmt: skip
        if subprocess.run([str(exe), *args]).returncode == 0:
            got.add(name)
    assert got == expected


@pytest.mark.skipif(not shutil.which("cc"), reason="needs a C compiler")
@pytest.mark.parametrize(("text", "expected"), CASES)
def test_matches_empty_agrees_with_c(text: str, expected: set[str], tmp_path: Path) -> None:
    """The probes drop skbs with nothing decoded before reading further when
    matches_empty is False (VT_FILTER_EMPTY=0): it must be what the C says for
    an all-zero struct vt_pkt, or such skbs would be hidden wrongly."""
    src = tmp_path / "f.c"
    src.write_text("#include <stdlib.h>\n" + C_HARNESS.replace("%s", compile_filter(text).to_c()))
    exe = tmp_path / "f"
    subprocess.run(["cc", "-O0", "-o", str(exe), str(src)], check=True)
    zero = subprocess.run([str(exe), "0", "0", "0", "0.0.0.0", "0.0.0.0", "0", "0"])
    assert compile_filter(text).matches_empty == (zero.returncode == 0)


def test_matches_empty_examples() -> None:
    assert compile_filter("").matches_empty
    assert compile_filter("not arp").matches_empty
    assert compile_filter("not (tcp and port 80)").matches_empty
    assert not compile_filter("host 10.0.0.1").matches_empty
    assert not compile_filter("arp or icmp").matches_empty
