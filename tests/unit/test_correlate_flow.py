"""correlate on UDP flows: one path per datagram, never one per flow — pure logic.

The recordings are real: `vethtrace trace udp -n HOST -n SONG --duration 3
--write F` on the seed-fixed lab while vt-host sent six datagrams from
192.168.122.101:40000 to a socket on 192.168.122.102:5555, 20 ms apart (three
with sendto, three after connect). In both, the datagrams' (skb, head) pairs
recur (datagram 1 and 4 share a head, 2 and 3 too) and no consume_skb retires
them: the receiving socket's free is not seen in the probed namespaces.
trace-udp-flow-noid.vtrec was made before the probes decoded the IPv4 id, so
it only has skb identity to go by; trace-udp-flow.vtrec has the ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from vethtrace.correlate import correlate
from vethtrace.model import PacketSummary, ProbeEvent
from vethtrace.record import read

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "events"
H, S = 1001, 1002  # netns inodes: sender, receiver


def udp(ip_id: int | None = None) -> PacketSummary:
    return PacketSummary(
        ethertype=0x0800, ip_src="10.0.0.1", ip_dst="10.0.0.2", ip_proto=17,
        sport=40000, dport=5201, ip_id=ip_id,
    )  # fmt: skip


def datagram(t: int, skb: int, head: int, pkt: PacketSummary) -> list[ProbeEvent]:
    """What the probes see of one datagram over a veth pair (docs/kernel-notes.md)."""
    return [
        ProbeEvent(t, "net_dev_queue", H, 2, "veth0", skb, head, 53, pkt),
        ProbeEvent(t + 1_000, "net_dev_start_xmit", H, 2, "veth0", skb, head, 53, pkt),
        ProbeEvent(t + 5_000, "netif_rx", S, 2, "veth1", skb, head, 39, pkt),
        ProbeEvent(t + 8_000, "net_dev_xmit", H, 2, "veth0", skb, 0, 53, extra={"rc": 0}),
        ProbeEvent(t + 9_000, "netif_receive_skb", S, 2, "veth1", skb, head, 39, pkt),
    ]


@pytest.mark.parametrize("name", ["trace-udp-flow", "trace-udp-flow-noid"])
def test_recorded_udp_flow_gives_one_path_per_datagram(name: str) -> None:
    rec = read(SAMPLES / f"{name}.vtrec")
    sent = [e for e in rec.events if e.point == "net_dev_queue" and e.ifname == "br0"]
    assert len(sent) == 6  # the recording holds the six datagrams
    paths = correlate(rec.events, rec.topology)
    assert len(paths) == 6
    for path in paths:
        assert path.kind == "udp" and path.outcome == "delivered"
        where = [(h.netns.split("-")[-1], h.interface, h.note) for h in path.hops]
        assert where == [
            ("host", "br0", "sent"), ("host", "veth0", "sent"), ("song", "veth1", "received"),
        ]  # fmt: skip
    # each path starts at its own datagram's first event
    assert [p.first_ns for p in paths] == [e.ts_ns for e in sent]


def test_flood_with_distinct_skbs_and_same_ports_is_not_one_path() -> None:
    """RECORD's repro: 1000 datagrams, each its own (skb, head), 50 µs apart, no id."""
    events = []
    for i in range(1000):
        events += datagram(i * 50_000, 0xA000 + i * 0x100, 0xB000 + i * 0x1000, udp())
    paths = correlate(events)
    assert len(paths) == 1000
    assert all(len(p.hops) == 2 and p.outcome == "delivered" for p in paths)


def test_recycled_skb_and_head_without_a_free_start_a_new_packet() -> None:
    """The dead datagram's (skb, head) comes back for the next one, ids unknown:
    a second net_dev_queue on the same device is a new packet."""
    events = datagram(0, 0xA100, 0xB100, udp()) + datagram(20_000, 0xA100, 0xB100, udp())
    assert len(correlate(events)) == 2


def test_clone_with_a_recycled_head_and_another_ip_id_is_another_packet() -> None:
    events = datagram(0, 0xA100, 0xB100, udp(7)) + datagram(20_000, 0xA200, 0xB100, udp(8))
    paths = correlate(events)
    assert [p.summary.ip_id for p in paths if p.summary] == [7, 8]


def test_copy_with_the_same_ip_id_still_joins_by_headers() -> None:
    """skb_copy mid-path (new address and buffer): the IPv4 id says it is the same
    datagram, so the receive joins the send."""
    pkt = udp(4242)
    events = datagram(0, 0xA100, 0xB100, pkt)
    events[2:] = [
        ProbeEvent(5_000, "netif_rx", S, 2, "veth1", 0xC100, 0xD100, 39, pkt),
        ProbeEvent(9_000, "netif_receive_skb", S, 2, "veth1", 0xC100, 0xD100, 39, pkt),
    ]
    paths = correlate(events)
    assert len(paths) == 1 and [h.interface for h in paths[0].hops] == ["veth0", "veth1"]


def test_sniffed_frame_joins_the_kernel_hop_of_its_own_datagram() -> None:
    """A tap has no skb identity: it joins by headers, and the IPv4 id picks the
    right datagram of the flow."""
    events = datagram(0, 0xA100, 0xB100, udp(1)) + datagram(20_000, 0xA200, 0xB200, udp(2))
    events.append(
        ProbeEvent(6_000, "sniff", S, 2, "veth1", packet=udp(1), source="sniff",
                   extra={"direction": "incoming"})
    )  # fmt: skip
    events.append(
        ProbeEvent(26_000, "sniff", S, 2, "veth1", packet=udp(2), source="sniff",
                   extra={"direction": "incoming"})
    )  # fmt: skip
    paths = correlate(events)
    assert len(paths) == 2
    for path in paths:
        rx = [h for h in path.hops if h.interface == "veth1"]
        assert len(rx) == 1 and rx[0].sniffed
