"""correlate: skb identity, clones, address reuse, nesting, sniffer joins — pure logic.

Small event lists modelled on the sequences in docs/kernel-notes.md, and the
real seed recording (samples/events/ping-seed.jsonl, made by
`vethtrace ping --write` on the seed lab)."""

from __future__ import annotations

from pathlib import Path

from vethtrace.correlate import correlate, group
from vethtrace.model import (
    Address,
    IfaceKey,
    Interface,
    Namespace,
    PacketSummary,
    ProbeEvent,
    Topology,
)
from vethtrace.record import read

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "events"
H, S = 1001, 1002  # netns inodes: host, song


def arp(op: int, spa: str, tpa: str) -> PacketSummary:
    return PacketSummary(ethertype=0x0806, arp_op=op, arp_spa=spa, arp_tpa=tpa)


REQ = arp(1, "192.168.122.101", "192.168.122.102")
REP = arp(2, "192.168.122.102", "192.168.122.101")


def ev(ts: int, point: str, ns: int, ifindex: int, name: str, skb: int, head: int, pkt=None, **kw):
    return ProbeEvent(
        ts_ns=ts, point=point, netns=ns, ifindex=ifindex, ifname=name, skb=skb, head=head,
        packet=pkt, **kw,
    )  # fmt: skip


def seed_topo() -> Topology:
    def iface(ns: int, idx: int, name: str, kind: str, **kw) -> Interface:
        return Interface(IfaceKey(ns, idx), name, kind, True, "UP", True, 1500, **kw)

    host = Namespace(H, "host", interfaces=[
        iface(H, 2, "br0", "bridge"),
        iface(H, 3, "veth0", "veth", master=2, peer=IfaceKey(S, 2),
              addresses=[Address("192.168.122.101", 24)]),
    ])  # fmt: skip
    song = Namespace(S, "song", interfaces=[
        iface(S, 2, "veth1", "veth", peer=IfaceKey(H, 3),
              addresses=[Address("192.168.122.102", 24)]),
    ])  # fmt: skip
    return Topology(namespaces=[host, song])


def seed_events() -> list[ProbeEvent]:
    """Case 1 of the notes, trimmed: request A out of veth0, reply B back in and up br0."""
    A, B, HA, HB = 0xA00, 0xB00, 0x1A00, 0x1B00
    return [
        ev(100, "net_dev_queue", H, 3, "veth0", A, HA, REQ),
        ev(101, "net_dev_start_xmit", H, 3, "veth0", A, HA, REQ),
        ev(102, "netif_rx", S, 2, "veth1", A, HA, REQ),
        ev(103, "net_dev_xmit", H, 3, "veth0", A, 0, None, extra={"rc": 0}),  # nested: after rx
        ev(104, "netif_receive_skb", S, 2, "veth1", A, HA, REQ),
        ev(105, "net_dev_queue", S, 2, "veth1", B, HB, REP),
        ev(106, "netif_rx", H, 3, "veth0", B, HB, REP),
        ev(107, "consume_skb", S, 2, "veth1", A, HA, None, location="arp_process"),
        ev(108, "netif_receive_skb", H, 3, "veth0", B, HB, REP),
        ev(109, "netif_receive_skb", H, 2, "br0", B, HB, REP),
        ev(110, "consume_skb", H, 2, "br0", B, HB, None, location="arp_process"),
    ]


def test_seed_sequence_gives_request_and_reply_paths() -> None:
    paths = correlate(seed_events(), seed_topo())
    assert [p.kind for p in paths] == ["arp-request", "arp-reply"]
    req, rep = paths
    assert [(h.netns, h.interface, h.note) for h in req.hops] == [
        ("host", "veth0", "sent"),
        ("song", "veth1", "received"),
        ("song", "veth1", "consumed at arp_process"),
    ]
    assert [(h.interface, h.note) for h in rep.hops] == [
        ("veth1", "sent"),
        ("veth0", "received"),
        ("br0", "handed up from port veth0 by its rx_handler"),
        ("br0", "consumed at arp_process"),
    ]
    assert rep.outcome == "consumed"


def test_address_reused_after_consume_is_a_new_packet() -> None:
    """The notes saw a freed clone's address reused 40 µs later for another packet."""
    A, H1, H2 = 0xA00, 0x1A00, 0x2A00
    events = [
        ev(1, "net_dev_queue", H, 3, "veth0", A, H1, REQ),
        ev(2, "consume_skb", H, 3, "veth0", A, H1, None, location="arp_process"),
        # same address, new buffer, different packet (no summary on the first sighting)
        ev(3, "net_dev_queue", S, 2, "veth1", A, H2, REP),
        ev(4, "kfree_skb", S, 2, "veth1", A, H2, None, drop_reason="QDISC_DROP"),
    ]
    paths = correlate(events, seed_topo())
    assert [p.kind for p in paths] == ["arp-request", "arp-reply"]
    assert paths[0].outcome == "consumed"
    assert paths[1].outcome == "dropped" and paths[1].drop_reason == "QDISC_DROP"


def test_clone_shares_head_and_joins_the_packet() -> None:
    """Bridge flood: the copy to another port has a new address but the same head."""
    A, A2, HA = 0xA00, 0xA80, 0x1A00
    events = [
        ev(1, "netif_receive_skb", H, 3, "veth0", A, HA, REQ),
        ev(2, "net_dev_queue", H, 4, "veth9", A2, HA, None, cloned=True),  # clone, no summary
        ev(3, "netif_receive_skb", H, 2, "br0", A, HA, REQ),
    ]
    (path,) = correlate(events, seed_topo())
    assert [h.interface for h in path.hops] == ["veth0", "veth9", "br0"]


def test_nested_xmit_failure_marks_the_send_hop() -> None:
    """rc=1 at net_dev_xmit (port dropped it) arrives after the inner events."""
    A, HA = 0xA00, 0x1A00
    events = [
        ev(1, "net_dev_queue", H, 3, "veth0", A, HA, REQ),
        ev(2, "kfree_skb", H, 3, "veth0", A, HA, None, drop_reason="NOT_SPECIFIED",
           location="__dev_forward_skb2"),
        ev(3, "net_dev_xmit", H, 3, "veth0", A, 0, None, extra={"rc": 1}),
    ]  # fmt: skip
    (path,) = correlate(events, seed_topo())
    send = path.hops[0]
    assert not send.ok and "rc=1" in send.note
    assert path.outcome == "dropped"


def test_sniffed_frames_join_kernel_hops_without_skb() -> None:
    events = seed_events()
    # what tcpdump on veth0 sees: the reply arriving (socket clock, slightly early)
    events.append(
        ProbeEvent(
            ts_ns=105, point="sniff", netns=H, ifindex=3, ifname="veth0", packet=REP,
            source="sniff", extra={"direction": "incoming"},
        )
    )  # fmt: skip
    _req, rep = correlate(events, seed_topo())
    veth0 = next(h for h in rep.hops if h.interface == "veth0")
    assert veth0.sniffed and veth0.point == "netif_rx"
    assert len([h for h in rep.hops if h.interface == "veth0"]) == 1


def test_sniffer_only_crossings_make_their_own_hops() -> None:
    sniffed = [
        ProbeEvent(
            ts_ns=t, point="sniff", netns=ns, ifindex=idx, ifname=name, packet=REP,
            source="sniff", extra={"direction": d},
        )
        for t, ns, idx, name, d in [
            (1, S, 2, "veth1", "outgoing"), (2, H, 3, "veth0", "incoming"),
            (2, H, 2, "br0", "incoming"),
        ]
    ]  # fmt: skip
    (path,) = correlate(sniffed, seed_topo())
    assert [(h.interface, h.sniffed) for h in path.hops] == [
        ("veth1", True),
        ("veth0", True),
        ("br0", True),
    ]
    assert path.hops[2].note.startswith("handed up from port veth0")


def test_real_seed_recording_shows_the_reply_taken_by_br0() -> None:
    rec = read(SAMPLES / "ping-seed.jsonl")
    assert rec.topology is not None
    paths = correlate(rec.events, rec.topology)
    replies = [p for p in paths if p.kind == "arp-reply"]
    assert replies, "the recording must contain the ARP reply"
    hops = [(h.interface, h.note) for h in replies[0].hops]
    ifaces = [i for i, _n in hops]
    assert ifaces.index("veth1") < ifaces.index("veth0") < ifaces.index("br0")
    assert ("br0", "handed up from port veth0 by its rx_handler") in hops
    assert any(n == "consumed at arp_process" and i == "br0" for i, n in hops)
    # the sniffer on veth0 saw the reply: what makes people think veth0 got it
    assert next(h for h in replies[0].hops if h.interface == "veth0").sniffed


def test_group_ignores_unrelated_ends() -> None:
    """A consume of an skb we never saw begin (and without a packet) is not a packet."""
    events = [ev(1, "consume_skb", H, 3, "veth0", 0xDEAD, 0xBEEF, None, location="x")]
    assert group(events) == []


ECHO = PacketSummary(ethertype=0x0800, ip_src="192.168.122.101", ip_dst="192.168.122.102",
                     ip_proto=1, icmp_type=8, icmp_code=0, icmp_id=7, icmp_seq=1)  # fmt: skip


def _queued_echo() -> list[ProbeEvent]:
    """An echo request waiting for veth0's neighbour: the ARP-queue probe frees a
    copy (same head) at __neigh_event_send, the packet itself is not consumed."""
    return [
        ev(10, "consume_skb", H, 3, "veth0", 0xE01, 0x1E00, ECHO, location="__neigh_event_send",
           cloned=True),
        ev(1_000_000_010, "consume_skb", H, 3, "veth0", 0xE02, 0x1E00, ECHO,
           location="neigh_probe", cloned=True),
    ]  # fmt: skip


def test_an_echo_in_the_arp_queue_is_queued_not_consumed() -> None:
    (path,) = correlate(_queued_echo(), seed_topo())
    assert path.outcome == "queued"
    assert "ARP queue" in path.hops[0].note


def test_a_queued_echo_freed_when_the_entry_fails_is_dropped() -> None:
    fail = ev(3_000_000_000, "kfree_skb", H, 3, "veth0", 0xE00, 0x1E00, ECHO,
              drop_reason="NEIGH_FAILED", location="neigh_invalidate")  # fmt: skip
    (path,) = correlate([*_queued_echo(), fail], seed_topo())
    assert (path.outcome, path.drop_reason) == ("dropped", "NEIGH_FAILED")


def test_a_queued_echo_sent_once_resolved_is_not_queued() -> None:
    sent = [
        ev(2_000_000, "net_dev_queue", H, 3, "veth0", 0xE00, 0x1E00, ECHO),
        ev(2_000_100, "netif_rx", S, 2, "veth1", 0xE00, 0x1E00, ECHO),
    ]
    events = [_queued_echo()[0], *sent]
    (path,) = correlate(events, seed_topo())
    assert path.outcome == "delivered"
    (path,) = correlate(events[:2], seed_topo())  # sent, nothing seen since
    assert path.outcome == "in-flight"


def test_an_arp_in_a_recycled_buffer_never_joins_an_echo() -> None:
    """The neighbour probe for a queued (encapsulated) echo sends an ARP request; when
    its skb and buffer recycle a key of the echo still live, the ARP is a packet of
    its own: an ARP and an IP packet are never one skb."""
    queued = ev(10, "consume_skb", H, 3, "veth0", 0xE01, 0x1E00, ECHO,
                location="__neigh_event_send", cloned=True)  # fmt: skip
    probe = arp(1, "192.168.122.101", "192.168.122.9")
    events = [
        ev(5, "net_dev_queue", H, 3, "veth0", 0xE00, 0x1E00, ECHO),
        queued,
        ev(1_000_000_000, "net_dev_queue", H, 2, "br0", 0xE00, 0x1E00, probe),
        ev(1_000_000_100, "netif_rx", S, 2, "veth1", 0xE00, 0x1E00, probe),
    ]
    paths = correlate(events, seed_topo())
    assert sorted(p.kind for p in paths) == ["arp-request", "echo"]
    echo = next(p for p in paths if p.kind == "echo")
    assert {h.interface for h in echo.hops} == {"veth0"}
