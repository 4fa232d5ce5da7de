"""The pcap-filter subset: parsing, errors, Python evaluation, and the jump
program the probes interpret (run here by the same interpreter in Python and
checked against the tree's evaluation over many generated filters and packets)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from vethtrace.collect import events
from vethtrace.collect.events import contract
from vethtrace.collect.filter import ACCEPT, FIELDS, MAX, REJECT, _le32, compile_filter, run
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


# --- the jump program the probes run ------------------------------------------


def _vt_pkt(pkt: PacketSummary) -> tuple[int, ...]:
    """struct vt_pkt's filter fields (filter.FIELDS order) as the probes decode pkt."""
    src = pkt.arp_spa or pkt.ip_src or "0.0.0.0"
    dst = pkt.arp_tpa or pkt.ip_dst or "0.0.0.0"
    l4 = 4 if pkt.sport is not None or pkt.icmp_type is not None else 0
    return (pkt.ethertype or 0, pkt.ip_proto or 0, _le32(src), _le32(dst), pkt.sport or 0,
            pkt.dport or 0, 3 | l4 if pkt.ethertype else 0)  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_program_agrees(text: str, expected: set[str]) -> None:
    """The program the probes interpret accepts exactly what the tree accepts."""
    prog = compile_filter(text).program
    got = {name for name, pkt in PACKETS.items() if run(prog, _vt_pkt(pkt))}
    assert got == expected


ADDRS = ["10.0.0.1", "10.0.0.2", "10.0.1.7", "192.168.1.9", "0.0.0.0"]
PORTS = [0, 53, 80, 4789, 5201]


def _random_filter(rnd: random.Random, depth: int = 0) -> str:
    """A filter text from every primitive and operator the parser knows."""
    r = rnd.random()
    if depth < 3 and r < 0.45:
        op = rnd.choice([" and ", " or ", " && ", " || "])
        return f"({_random_filter(rnd, depth + 1)}{op}{_random_filter(rnd, depth + 1)})"
    if depth < 3 and r < 0.55:
        return f"not {_random_filter(rnd, depth + 1)}"
    d = rnd.choice(["", "src ", "dst "])
    return rnd.choice([
        rnd.choice(["arp", "ip", "icmp", "tcp", "udp"]),
        f"{d}host {rnd.choice(ADDRS)}",
        f"{d}net {rnd.choice(ADDRS)}/{rnd.choice([0, 8, 16, 24, 31, 32])}",
        f"{d}port {rnd.choice(PORTS)}",
        f"{rnd.choice(['tcp', 'udp'])} {d}port {rnd.choice(PORTS)}",
    ])  # fmt: skip


def _random_packet(rnd: random.Random) -> tuple[int, ...]:
    """Raw struct vt_pkt fields, including combinations no real frame has."""
    et = rnd.choice([0, 0x0800, 0x0806, 0x86DD, 0x0800])
    proto = rnd.choice([0, 1, 6, 17, 47]) if et == 0x0800 or rnd.random() < 0.1 else 0
    flags = 0 if not et else 3 | (4 if proto in (1, 6, 17) and rnd.random() < 0.9 else 0)
    ports = (rnd.choice(PORTS), rnd.choice(PORTS)) if flags & 4 and proto != 1 else (0, 0)
    addrs = (_le32(rnd.choice(ADDRS)), _le32(rnd.choice(ADDRS))) if et in (0x0800, 0x0806) \
        else (0, 0)  # fmt: skip
    return (et, proto, *addrs, *ports, flags)


def _summary(f: tuple[int, ...]) -> PacketSummary:
    """What collect/events.py makes of those fields (the real decoder)."""
    c = contract()
    r = SimpleNamespace(**{f"pkt_{n}": v for n, v in zip(FIELDS, f, strict=True)},
                        pkt_eth_src=b"\0" * 6, pkt_eth_dst=b"\0" * 6, pkt_arp_op=1,
                        pkt_arp_sha=b"\0" * 6, pkt_arp_tha=b"\0" * 6, pkt_ip_id=0,
                        pkt_icmp_type=8, pkt_icmp_code=0, pkt_icmp_id=1,
                        pkt_icmp_seq=1)  # fmt: skip
    return events._headers(r, "pkt_", c)


def test_program_equals_tree_on_generated_filters_and_packets() -> None:
    """Thousands of generated filters x packets: the interpreted program and
    the tree evaluation (Filter.matches on what the decoder makes of the same
    fields) agree, and matches_empty is the program on an all-zero packet."""
    rnd = random.Random(18)
    packets = [_random_packet(rnd) for _ in range(300)]
    summaries = [_summary(p) for p in packets]
    checked = accepted = 0
    for _ in range(400):
        flt = compile_filter(_random_filter(rnd))
        prog = flt.program
        for i, ins in enumerate(prog):  # forward only: the probes' loop ends
            assert ins.jt > i and ins.jf > i
            assert ins.jt < len(prog) or ins.jt in (ACCEPT, REJECT)
            assert ins.jf < len(prog) or ins.jf in (ACCEPT, REJECT)
        for raw, summ in zip(packets, summaries, strict=True):
            got = run(prog, raw)
            assert got == flt.matches(summ), (flt.text, raw, summ)
            accepted += got
            checked += 1
        assert flt.matches_empty == flt.matches(_summary((0,) * len(FIELDS)))
    assert checked == 120_000 and 0.05 < accepted / checked < 0.95  # both outcomes exercised


def test_program_short_circuits_in_expression_order() -> None:
    """A packet that fails the first test of `tcp and port 80` costs one step."""
    prog = compile_filter("tcp and port 80").program
    assert prog[0].field == FIELDS.index("ethertype") and prog[0].jf == REJECT


def test_too_long_filter_is_one_clear_error() -> None:
    text = " or ".join(f"host 10.0.0.{i}" for i in range(1, 40))
    with pytest.raises(UserError) as exc:
        compile_filter(text).program_bytes()
    assert "too long" in str(exc.value) and f"at most {MAX}" in str(exc.value)
    assert len(compile_filter("tcp port 80 or udp port 53").program_bytes()) == MAX * 16


def test_matches_empty_examples() -> None:
    assert compile_filter("").matches_empty
    assert compile_filter("not arp").matches_empty
    assert compile_filter("not (tcp and port 80)").matches_empty
    assert not compile_filter("host 10.0.0.1").matches_empty
    assert not compile_filter("arp or icmp").matches_empty
