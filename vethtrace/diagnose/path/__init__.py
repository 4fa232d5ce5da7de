"""Path prediction: what the kernel's own tables decide for one packet, hop by
hop, forward and back, without sending anything.

    predict(topology, Flow(src_netns, dst, proto, port)) -> PathPrediction
        .forward, .reply          lists of Hop (netns, interface, step, decision,
                                  source entry, status ok/fail/unknown, cause, fix)
        .first_failure            the decision that loses the packet, or None
        .ok, .to_dict()

Modules: flow (the types), route (policy rules, tables, source selection,
effective sysctls), neigh (entries, who answers ARP), bridge (veth crossing,
FDB, flooding, port flags, br_netfilter), nft (ruleset evaluation and NAT),
walk (the engine). `check` and `ping` are meant to call `predict` and name
`first_failure` as their culprit.
"""

from vethtrace.diagnose.path.flow import PROTOS, Flow, Hop, Packet, PathPrediction
from vethtrace.diagnose.path.walk import predict

__all__ = ["PROTOS", "Flow", "Hop", "Packet", "PathPrediction", "predict"]
