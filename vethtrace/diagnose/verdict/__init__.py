"""One verdict for a ping: delivered, diverted, dropped, no-reply or unreachable.

Input is only data — the plan (what ping expected: source, route, egress,
next hop, target), the topology snapshot, and the events (kernel probes,
sniffed frames, and ping's own observations: `ping-send`, `ping-reply`,
`ping-error`, `neigh-state` from netlink). Nothing here touches the live
system, so `report` reaches the same verdict from a recording, and ping can
call `judge(..., final=False)` while traffic flows to stop as soon as the
answer is certain.

Order of the questions, and why:
1. unreachable — no route at the source: nothing was sent, nothing else matters.
2. delivered   — an echo reply came back to the sender's socket: the only proof.
3. diverted    — an ARP reply for the next hop arrived on the egress interface,
   but that interface is enslaved (bridge/bond port): its rx_handler hands
   every frame to the master's stack, so the entry that asked never resolves.
   Checked before drops because the consequence (NEIGH_FAILED drops, ICMP
   host-unreachable) looks like a drop but is not the cause.
4. dropped     — the kernel freed one of our packets with a reason; reasons are
   translated into what they mean on veth/bridge setups (a QDISC_DROP on a
   carrier-less veth means the peer is down; NOT_SPECIFIED in
   __dev_forward_skb2 with a frame longer than the peer's MTU is an MTU
   mismatch). NO_SOCKET at ping_rcv is benign (every root ping reply).
5. no-reply    — a request reached the target interface and nothing came back.

Layout: `plan` (what ping expects), `analysis` (the evidence every family reads), one module
per verdict family (`diverted`, `dropped`, `no_reply` incl. stalled/lost), and
`decide` (the order above).
"""

from __future__ import annotations

from vethtrace.diagnose.verdict.analysis import Analysis, analyse, neighbour_timeline, ours
from vethtrace.diagnose.verdict.decide import Decision, decide, judge
from vethtrace.diagnose.verdict.diverted import annotated_paths, mark_diversion
from vethtrace.diagnose.verdict.plan import PingPlan, make_plan

__all__ = [
    "Analysis",
    "Decision",
    "PingPlan",
    "analyse",
    "annotated_paths",
    "decide",
    "judge",
    "make_plan",
    "mark_diversion",
    "neighbour_timeline",
    "ours",
]
