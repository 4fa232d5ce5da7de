"""The verdict of a ping across nodes (`ping --agents`), from what the agents said.

Inputs: the merged topology (topology/merge.py), the path model's prediction
over it, the source agent's echo results, the probe events of each node on
the path, and which agents could not be asked and why. No I/O.

Why a verdict of its own and not ping's `judge`: judge follows one machine's
skbs through one clock and its sniffers; across nodes neither holds (each
node's kernel has its own monotonic clock, and no agent sniffs). What can be
said: whether the echo was answered (the source node's socket), how far the
request was seen (the furthest node along the predicted path with an event
for it), where a kernel dropped it, and the model's first failing decision,
which names the node, namespace, interface and fix. An agent that could not
be asked is always named: its part of the evidence is missing, and when its
topology is missing the prediction is said to be made without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vethtrace.diagnose.path.flow import Hop, PathPrediction
from vethtrace.model import ProbeEvent, Topology, Verdict
from vethtrace.topology.merge import local_name, localise, node_of


@dataclass
class NodeStatus:
    node: str  # its label, or its URL when it could not even say its name
    url: str
    why: str | None = None  # could not be asked: why (None: it answered everything)
    has_topology: bool = False
    events: int = 0


@dataclass
class ClusterPing:
    source: str  # merged namespace names
    target: str
    ip: str
    sent: int = 0
    replies: int = 0
    ping_error: str | None = None  # the source node could not send
    nodes: list[NodeStatus] = field(default_factory=list)


def path_nodes(pred: PathPrediction) -> list[str]:
    """The nodes the predicted path crosses, in order (forward then reply)."""
    return list(dict.fromkeys(n for h in pred.forward + pred.reply if (n := node_of(h.netns))))


def assemble(
    topo: Topology, pred: PathPrediction, run: ClusterPing, events: list[ProbeEvent]
) -> Verdict:
    unasked = [n for n in run.nodes if n.why]
    missing = "; ".join(f"{n.node} could not be asked ({n.why})" for n in unasked)
    if run.ping_error is not None:
        return Verdict("no-reply", f"no echo request was sent: {run.ping_error}"
                       + (f"; {missing}" if missing else ""))  # fmt: skip
    crossed = " -> ".join(path_nodes(pred)) or node_of(run.source)
    if run.replies:
        v = Verdict(
            "delivered",
            f"{run.source} reached {run.ip} ({run.target}): {run.replies}/{run.sent} echo "
            f"replies, across {crossed}",
        )
        if missing:
            v.summary += f"; {missing}: its hops are not confirmed"
        return v
    v = Verdict("no-reply", f"no reply from {run.ip} ({run.target}) to {run.source}")
    seen = _seen(topo, pred, events, run.ip)
    fail = pred.first_failure
    drop = next((e for e in reversed(events) if e.drop_reason and _ours(e, run.ip)), None)
    if fail is not None:
        _blame(v, topo, fail)
        if not all(n.has_topology for n in run.nodes):
            v.explanation += " (predicted without the nodes that could not be asked)"
    elif drop is not None:
        v.kind = "dropped"
        where = topo.netns_name(drop.netns)
        v.culprit, v.culprit_netns, v.culprit_interface = drop.key, where, drop.ifname
        v.summary += (f": dropped on {node_of(where)} at {local_name(where)}/{drop.ifname} "
                      f"({drop.drop_reason})")  # fmt: skip
    elif seen:
        v.summary += f": last seen on {seen}"
    if seen and fail is not None:
        v.explanation += f" The echo request was last seen on {seen}."
    if missing:
        v.summary += f"; {missing}"
    return v


def _blame(v: Verdict, topo: Topology, hop: Hop) -> None:
    ns_name, iface = hop.culprit
    node = node_of(ns_name)
    ns = topo.netns_by_name(ns_name)
    it = ns.iface_by_name(iface) if ns is not None and iface else None
    v.culprit = it.key if it is not None else None
    v.culprit_netns, v.culprit_interface = ns_name, iface
    where = f"{local_name(ns_name)}/{iface}" if iface else local_name(ns_name)
    v.summary += f": {hop.decision} on {node or ns_name} ({where})"
    v.explanation = hop.cause
    v.fix = [localise(c, topo) for c in hop.fix]


def _ours(e: ProbeEvent, ip: str) -> bool:
    p = e.packet
    return p is not None and p.icmp_type in (0, 8) and ip in (p.ip_src, p.ip_dst)


def _seen(topo: Topology, pred: PathPrediction, events: list[ProbeEvent], ip: str) -> str:
    """'node (netns/iface)' of the furthest node along the path that saw the echo
    request; each node's events are in its own clock, so only order within a
    node is used."""
    requests = [e for e in events if e.packet is not None and e.packet.icmp_type == 8
                and e.packet.ip_dst == ip and e.source != "ping"]  # fmt: skip
    last = ""
    for node in path_nodes(pred):
        mine = [e for e in requests if node_of(topo.netns_name(e.netns)) == node]
        if mine:
            e = max(mine, key=lambda x: x.ts_ns)
            last = f"{node} ({local_name(topo.netns_name(e.netns))}/{e.ifname}, {e.point})"
    return last
