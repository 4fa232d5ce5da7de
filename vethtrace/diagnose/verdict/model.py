"""The observed verdict beside the path model's prediction of the same ping.

ping and report both call `compare` after `judge`, so a recording re-judged
later carries the same prediction as the live run (the recorded topology holds
the tables the model reads). The prediction never costs the observed verdict:
when the model cannot run, a note says why and the verdict stands. Where the two
disagree, a note says so plainly (a model gap, or something the tables cannot
show). For the kinds of decision the model names better than the place a frame
was last seen (MODEL_CULPRITS), the failing decision becomes the culprit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from vethtrace.diagnose.verdict.plan import PingPlan
from vethtrace.model import Topology, Verdict

# Decisions the model names better than the place a frame was last seen (#15):
# the verdict's culprit becomes the decision's place for these kinds.
MODEL_CULPRITS = {
    "missing-masquerade", "proxy-arp-missing", "bridge-port-flood-off",
    "neighbour-wrong-mac", "netfilter-forward-drop",
    # a bridge port the bridge does not send to because it (or its veth peer) is
    # down: the ARP request is flooded to nobody, the sender sees only silence
    "interface-down", "veth-peer-down",
    # the overlay (#19): the trace shows the inner packet last seen entering vxlan0, a
    # PKT_TOO_BIG where the node forwarded it, or the outer packet waiting for a
    # neighbour on the underlay; the decision is the VXLAN device's (its FDB, its
    # neighbour entries, its MTU against the 50-byte overhead)
    "vxlan-fdb-missing", "vxlan-fdb-wrong-dst", "vxlan-neigh-missing", "vxlan-mtu",
}  # fmt: skip


@dataclass
class ModelCheck:
    verdict: Verdict | None  # the observed verdict, its culprit possibly named by the model
    predicted: dict[str, Any] | None = None  # PathPrediction.to_dict(), for --json
    notes: list[str] = field(default_factory=list)


def compare(verdict: Verdict | None, plan: PingPlan, topo: Topology) -> ModelCheck:
    """Predict the plan's ping from the tables and set it beside `verdict`."""
    try:
        from vethtrace.diagnose.path import Flow, predict
        from vethtrace.diagnose.rules.overlay import overlay_rule_of as rule_of

        src_name = topo.netns_name(plan.source_inode, plan.source)
        pred = predict(topo, Flow(src_name, plan.ip, "icmp", size=plan.size + 28))
    except Exception as exc:  # the model must never cost the observed verdict
        return ModelCheck(verdict, None,
                          [f"path prediction unavailable: {type(exc).__name__}: {exc}"])
    out = ModelCheck(verdict, pred.to_dict())
    if verdict is None:
        return out
    failing, unknown = pred.first_failure, pred.first_unknown
    if verdict.reachable != pred.ok and not (unknown is not None and failing is None):
        said = "reachable" if pred.ok else f"lost at {failing.where if failing else '?'}"
        out.notes.append(
            f"observation and prediction disagree: the kernel's tables predict the ping "
            f"{said}, but it was {'answered' if verdict.reachable else 'not answered'}; "
            "either a model gap or something the tables cannot show"
        )
        return out
    if verdict.reachable or failing is None or rule_of(failing) not in MODEL_CULPRITS:
        return out
    netns_name, iface = failing.culprit
    if (verdict.culprit_netns, verdict.culprit_interface) == (netns_name, iface):
        return out  # the observation already names the decision's place
    ns = topo.netns_by_name(netns_name)
    it = ns.iface_by_name(iface) if ns is not None and iface else None
    out.verdict = replace(
        verdict,
        culprit=it.key if it is not None else None,
        culprit_netns=netns_name,
        culprit_interface=iface,
        summary=f"{verdict.summary}; the decision that lost it: {failing.decision} at "
        f"{failing.where}",
        explanation=(f"{failing.cause}. {verdict.explanation}".strip() if failing.cause
                     else verdict.explanation),
        fix=list(failing.fix) if failing.fix else verdict.fix,
    )
    return out
