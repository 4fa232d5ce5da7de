"""The entry points: `predict` one packet's path and its reply's, and
`Predictor` for many predictions on one topology (check asks hundreds): the
namespace index, parsed rulesets and flood answers are built once, not per
packet.
"""

from __future__ import annotations

from typing import Any

from vethtrace.diagnose.path import neigh, noroute
from vethtrace.diagnose.path.flow import End, Flow, Packet, PathPrediction
from vethtrace.diagnose.path.nft import Ruleset
from vethtrace.diagnose.path.route import lookup, select_source
from vethtrace.diagnose.path.walk import MAX_HOPS, Walker
from vethtrace.model import Namespace, Topology


class Predictor:
    """Many predictions on one topology (check asks hundreds): the namespace
    index and parsed rulesets are built once, not per packet."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self._rulesets: dict[int, Ruleset | None] = {}
        self._by_inode = {ns.inode: ns for ns in topo.namespaces}
        self._by_name = {ns.name: ns for ns in topo.namespaces}
        self._floods: dict[object, Any] = {}

    def predict(self, flow: Flow) -> PathPrediction:
        src = self._by_name.get(flow.src_netns)
        if src is None:
            raise ValueError(f"no namespace {flow.src_netns!r} in the topology")
        w = Walker(self.topo, self._rulesets, self._by_inode, self._floods)
        return _predict(w, src, flow)


def predict(topo: Topology, flow: Flow) -> PathPrediction:
    """Predict the packet's path from flow.src_netns to flow.dst and its reply's."""
    return Predictor(topo).predict(flow)


def _predict(w: Walker, src: Namespace, flow: Flow) -> PathPrediction:
    pred = PathPrediction(flow)
    if flow.proto == "arp":
        res = lookup(src, flow.dst, memo=w.floods)
        sip = select_source(src, res, flow.dst)
        if res.oif is None:
            noroute.no_route(w, src, None, Packet(sip, flow.dst, "arp"), res)
            pred.forward, pred.forward_outcome, pred.reply_outcome = w.hops, "failed", "none"
            return pred
        mac, hops = neigh.resolve(w, src, res.oif, res.gateway or flow.dst, sip)
        pred.forward = [
            w.hop(src, res.oif, "route", f"{flow.dst}: {res.kind}", res.describe()),
            *hops,
        ]
        failed = any(h.status == "fail" for h in hops)  # e.g. a wrong-MAC entry
        pred.forward_outcome = (
            "delivered" if mac and not failed else ("failed" if failed else "unknown")
        )
        pred.reply_outcome = "none"
        return pred
    pkt = Packet(
        None,
        flow.dst,
        flow.proto,
        flow.sport if flow.proto != "icmp" else None,
        flow.port if flow.proto != "icmp" else None,
        flow.size,
    )
    end = w.output(src, pkt)
    pred.forward, pred.forward_outcome = w.hops, end.kind
    if end.kind != "delivered" or end.ns is None or end.pkt is None:
        return pred
    pred.delivered_to = f"{end.ns.name}/{end.iface.name}" if end.iface else end.ns.name
    got = end.pkt
    reply = Packet(got.dst, got.src or "", got.proto, got.dport, got.sport, got.size, reply=True)
    w.hops = []
    w.budget = MAX_HOPS
    back = w.output(end.ns, reply)
    if back.kind == "delivered" and back.ns is not None and back.ns.inode != src.inode:
        w.add(
            back.ns,
            back.iface,
            "deliver",
            f"the reply ends in {back.ns.name}, not {src.name}",
            "",
            "fail",
            f"{back.pkt.dst if back.pkt else '?'} is held by {back.ns.name} too: the reply never "
            f"returns to {src.name}",
        )
        back = End("failed")
    pred.reply, pred.reply_outcome = w.hops, back.kind
    return pred
