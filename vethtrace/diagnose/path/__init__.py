"""Path prediction: what the kernel's own tables decide for one packet, hop by
hop, forward and back, without sending anything.

    predict(topology, Flow(src_netns, dst, proto, port)) -> PathPrediction
        .forward, .reply          lists of Hop (netns, interface, step, decision,
                                  source entry, status ok/fail/unknown, cause, fix)
        .first_failure            the decision that loses the packet, or None
        .ok, .to_dict()

Modules: flow (the types), route (policy rules, tables, source selection,
effective sysctls), neigh (entries, who answers ARP), l2 (frames between
devices, veth crossing), bridge (FDB, flooding, port flags), macvlan, l2flood
(keeping floods cheap), nft (ruleset evaluation), xt (iptables-nft's xt
matches), netfilter (hooks, NAT, conntrack, br_netfilter), noroute, deliver
(rp_filter, local delivery, sockets), walk (the engine), predict (`predict`,
`Predictor`). `check` and `ping` call them and name `first_failure` as their
culprit.
"""

from vethtrace.diagnose.path.flow import PROTOS, Flow, Hop, Packet, PathPrediction
from vethtrace.diagnose.path.predict import predict

__all__ = ["PROTOS", "Flow", "Hop", "Packet", "PathPrediction", "predict"]
