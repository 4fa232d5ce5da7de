"""A ping across nodes (`ping --agents`) for people and for scripts: the
verdict naming the node, each node asked and what it answered, the
predicted path with its node on every hop."""

from __future__ import annotations

from typing import Any

from vethtrace.diagnose.path.flow import PathPrediction
from vethtrace.diagnose.verdict.cluster import ClusterPing
from vethtrace.model import ProbeEvent, Topology, Verdict, to_dict
from vethtrace.topology.merge import localise


def to_json(
    v: Verdict, run: ClusterPing, pred: PathPrediction, events: list[ProbeEvent], topo: Topology
) -> dict[str, Any]:
    verdict = to_dict(v)
    verdict.pop("culprit", None)  # a merged inode means nothing outside this run
    ping = {"from": run.source, "to": run.target, "ip": run.ip, "sent": run.sent,
            "replies": run.replies, "error": run.ping_error}  # fmt: skip
    return {
        "verdict": verdict,
        "reachable": v.reachable,
        "ping": ping,
        "nodes": [to_dict(n) for n in run.nodes],
        "unasked": [{"node": n.node, "url": n.url, "why": n.why} for n in run.nodes if n.why],
        "predicted": pred.to_dict(),
        "notes": topo.notes,
        "events": len(events),
    }


def show(v: Verdict, run: ClusterPing, pred: PathPrediction, topo: Topology) -> None:
    mark = "✓" if v.reachable else "✗"
    print(f"{mark} {v.kind}: {v.summary}")
    if v.explanation:
        print(f"  why: {v.explanation}")
    for cmd in v.fix:
        print(f"  fix: {cmd}")
    print("nodes:")
    for n in run.nodes:
        state = f"could not be asked: {n.why}" if n.why else f"asked ({n.events} events)"
        print(f"  {n.node}  {n.url}  {state}")
    if not v.reachable and pred.forward:  # where it went is the verdict's evidence
        print("predicted path:")
        for leg, hops in (("forward", pred.forward), ("reply", pred.reply)):
            for h in hops:
                mark = {"ok": " ", "fail": "✗", "unknown": "?"}[h.status]
                print(f"  {mark} {leg:<7} {h.where:<40} {h.decision}")
                for cmd in h.fix if h.status != "ok" else []:
                    print(f"            fix: {localise(cmd, topo)}")
