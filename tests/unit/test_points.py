"""points.BENIGN_DROPS: which kernel frees are not drops (docs/kernel-notes.md)."""

from __future__ import annotations

import pytest

from vethtrace.model import PacketSummary, ProbeEvent
from vethtrace.points import benign_drop_reason, is_benign_drop


def _free(reason: str, location: str, dst: str | None = None) -> ProbeEvent:
    packet = PacketSummary(ip_src="10.0.0.1", ip_dst=dst, ip_proto=1) if dst else None
    return ProbeEvent(ts_ns=1, point="kfree_skb", netns=1, ifindex=2, ifname="eth0",
                      drop_reason=reason, location=location, packet=packet)  # fmt: skip


@pytest.mark.parametrize(
    ("reason", "location", "dst", "benign"),
    [
        ("NO_SOCKET", "ping_rcv+0x5c", "10.0.0.1", True),  # a ping's reply
        ("NO_SOCKET", "__udp4_lib_rcv+0x2f0", "10.0.0.2", False),  # a closed UDP port
        ("NOT_SPECIFIED", "ip6_mc_input", None, True),
        ("NOT_SPECIFIED", "ip_rcv_finish_core", "224.0.0.22", True),
        ("NOT_SPECIFIED", "ip_rcv_finish_core", "10.0.0.9", False),  # a real route failure
        ("NOT_SPECIFIED", "ip_rcv_finish_core", None, False),
        ("NOT_SPECIFIED", "__dev_forward_skb2", "10.0.0.2", False),  # the veth MTU drop
        ("QUEUE_PURGE", "neigh_destroy", "10.0.0.9", False),
        ("OTHERHOST", "ip_rcv_core", "10.0.0.2", False),
    ],
)
def test_benign_drops(reason: str, location: str, dst: str | None, benign: bool) -> None:
    ev = _free(reason, location, dst)
    assert is_benign_drop(ev) is benign
    assert (benign_drop_reason(ev) is not None) is benign
