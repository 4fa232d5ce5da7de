"""The probe-point taxonomy: which observation is a send, a receive, a free.

One definition for every stage that reads events: correlate turns them into
hops by these sets, the live view counts frames by the subsets named below,
and diagnose recognises a frame arriving at a device by them. The point
names are those the probes emit (probes/vethtrace.h, `VT_P_*`, lower case)
plus `sniff`, a frame seen by one of our packet sockets. Points not listed
(neighbour and fdb events, br_forward, br_pass_frame_up) are not hops of a
packet. The kernel facts behind the sets are in docs/kernel-notes.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vethtrace.model import PacketSummary, ProbeEvent

SNIFF = "sniff"

# A device sends: queued, handed to the driver, or (kprobe kernels) veth's own xmit.
TX_POINTS = frozenset({"net_dev_queue", "net_dev_start_xmit", "veth_xmit"})
# The completion of a send: fires after the driver returned, never reads the skb.
TX_DONE = frozenset({"net_dev_xmit"})
# A device receives: the backlog (netif_rx), the stack (netif_receive_skb), or
# (kprobe kernels) the bridge's rx_handler on a port.
RX_POINTS = frozenset({"netif_rx", "netif_receive_skb", "br_handle_frame"})
# The kernel frees an skb: kfree_skb is a drop (with a reason), consume_skb normal use.
FREE_POINTS = frozenset({"kfree_skb", "consume_skb"})
DROP_POINT = "kfree_skb"

# Counting frames per device (the live view): of the points above, the one per
# direction that every frame crosses exactly once per device, so a frame that
# fires several of them on its way (queue, start_xmit, xmit) is counted once.
# netif_receive_skb fires on veths and bridges alike.
COUNTED_TX_POINTS = frozenset({"net_dev_start_xmit"})
COUNTED_RX_POINTS = frozenset({"netif_receive_skb"})
assert COUNTED_TX_POINTS <= TX_POINTS and COUNTED_RX_POINTS <= RX_POINTS

# A frame arriving at a device's own stack, as a hop shows it: the receive
# points minus the rx_handler's hook (that is the port handing it on, not an
# arrival), plus what a sniffer saw arrive.
ARRIVAL_POINTS = (RX_POINTS - {"br_handle_frame"}) | {SNIFF}

# Frees that are not a loss anyone should see, by (reason, function), each with
# what it means and, where the pair alone is not enough, what the packet must
# be. Reviewed against what quiet labs show (bridges and veths between
# namespaces, pings, interfaces cycled; docs/kernel-notes.md "Drop reasons
# seen"): only these fire in normal operation. Everything else stays a drop,
# including OTHERHOST (a flooded frame for another MAC, but also the symptom of a
# wrong static MAC) and QUEUE_PURGE/NEIGH_FAILED (packets that waited for a
# neighbour that never answered).


def _ipv4_multicast(p: PacketSummary | None) -> bool:
    try:
        return p is not None and ipaddress.IPv4Address(p.ip_dst or "").is_multicast
    except ValueError:
        return False


BENIGN_DROPS: dict[tuple[str, str], tuple[str, Callable[[PacketSummary | None], bool] | None]] = {
    # icmp_rcv -> ping_rcv finds no SOCK_DGRAM ping socket for the echo reply and
    # frees it as NO_SOCKET; raw sockets (iputils ping as root, ours) already got
    # their copy in raw_local_deliver. Every reply to such a ping ends so.
    ("NO_SOCKET", "ping_rcv"): ("echo reply freed after raw sockets took their copy", None),
    # ip6_mc_input: IPv6 multicast (MLD reports, router and neighbour
    # solicitations) for a group this host did not join; veths and bridges flood
    # them to every namespace on the link, each drops what it did not join.
    ("NOT_SPECIFIED", "ip6_mc_input"): ("IPv6 multicast for a group not joined here", None),
    # The IPv4 twin: ip_route_input refuses multicast for a group not joined
    # (IGMPv3 reports to 224.0.0.22 reach every host); only for multicast
    # destinations, since other input route failures free here too.
    ("NOT_SPECIFIED", "ip_rcv_finish_core"): (
        "IPv4 multicast for a group not joined here",
        _ipv4_multicast,
    ),
}


def benign_drop_reason(ev: ProbeEvent) -> str | None:
    """Why this free is benign (BENIGN_DROPS), or None for a real drop.
    A location may carry a +offset."""
    entry = BENIGN_DROPS.get((ev.drop_reason or "", (ev.location or "").split("+")[0]))
    if entry is None:
        return None
    why, condition = entry
    return why if condition is None or condition(ev.packet) else None


def is_benign_drop(ev: ProbeEvent) -> bool:
    """Is this free one of BENIGN_DROPS?"""
    return benign_drop_reason(ev) is not None
