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

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vethtrace.model import ProbeEvent

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

# Frees that are not a loss anyone should see: the kernel reports every reply
# to a ping from a raw socket as NO_SOCKET at ping_rcv (the raw socket took it,
# the ping socket layer did not). (reason, function) pairs.
BENIGN_DROPS = frozenset({("NO_SOCKET", "ping_rcv")})


def is_benign_drop(ev: ProbeEvent) -> bool:
    """Is this free one of BENIGN_DROPS? (A location may carry a +offset.)"""
    return (ev.drop_reason or "", (ev.location or "").split("+")[0]) in BENIGN_DROPS
