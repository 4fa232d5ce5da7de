"""Rules judged on predicted paths across a VXLAN overlay (diagnose/path/vxlan.py):
from every container/pod namespace (paths.endpoints) whose node routes remote
pod subnets through a vxlan device, the path to one address held in each such
subnet, sent at the pod's full MTU (the overlay's MTU budget), and to each
remote VTEP's underlay address, must succeed forward and back. A failure
becomes a finding under the id of the overlay decision that lost it
(vxlan-fdb-missing, vxlan-mtu, ...); any other kind of decision (rp_filter
on the vxlan device, a forward drop) is reported under that kind's own id,
as paths.py does, unless a static rule already names it.

Cost: one prediction per (pod, remote subnet) and (pod, remote VTEP).
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_address, ip_network

from vethtrace.diagnose.path import Flow, Hop
from vethtrace.diagnose.path.vxlan import OUTER, vteps
from vethtrace.diagnose.rules.base import Context, Where, finding, rule
from vethtrace.diagnose.rules.paths import endpoints, rule_of
from vethtrace.model import Finding, Namespace

OVERLAY_RULES = {
    "vxlan-fdb-missing": "a VXLAN device without learning has no FDB entry for a remote "
    "VTEP's MAC (and no default destination): it drops what it should encapsulate",
    "vxlan-fdb-wrong-dst": "a VXLAN device's FDB entry sends a remote VTEP's MAC to an "
    "underlay address where no VTEP is",
    "vxlan-neigh-missing": "no neighbour entry for a remote VTEP on a VXLAN device that "
    "cannot carry ARP (no learning, no default destination)",
    "vxlan-mtu": "pods send packets larger than the VXLAN device or the underlay can carry "
    "once 50 bytes of encapsulation are added",
    "vxlan-port-filtered": "a firewall rule on the way drops the encapsulated UDP packets "
    "(the VXLAN port)",
    "vxlan-vni-mismatch": "a node encapsulates with a VNI no VXLAN device decapsulates at "
    "the remote node",
    "overlay-path-broken": "any other decision that loses pod traffic across the overlay "
    "(reported under that decision's own rule id)",
}
_STEPS = {
    "vxlan-fdb": "vxlan-fdb-missing",
    "vxlan-fdb-dst": "vxlan-fdb-wrong-dst",
    "vxlan-neigh": "vxlan-neigh-missing",
    "vxlan-mtu": "vxlan-mtu",
    "vxlan-vni": "vxlan-vni-mismatch",
}


def overlay_rule_of(hop: Hop) -> str:
    if hop.step in _STEPS:
        return _STEPS[hop.step]
    if hop.step == "nft" and hop.decision.startswith(OUTER):
        return "vxlan-port-filtered"
    return rule_of(hop)


def probes(ctx: Context, pod: Namespace) -> Iterator[tuple[str, int, str]]:
    """(destination, IP size, what) across the overlay from `pod`."""
    mtu = max((i.mtu for i in pod.interfaces if i.kind != "loopback"), default=1500)
    gws = {r.gateway for r in pod.routes if r.dst == "default" and r.gateway}
    node = next((ns for ns in ctx.topo.namespaces if any(
        a.address in gws for i in ns.interfaces for a in i.addresses)), None)  # fmt: skip
    if node is None:
        return
    devs = {i.key.ifindex for i in node.interfaces if i.vxlan is not None}
    if not devs:
        return
    held = [(ip_address(a.address), ns) for ns in endpoints(ctx) if ns.inode != pod.inode
            for i in ns.interfaces for a in i.addresses if a.family == 4]  # fmt: skip
    for r in node.routes:
        if r.oif not in devs or r.family != 4 or r.dst == "default":
            continue
        target = next(((a, ns) for a, ns in held if a in ip_network(r.dst)), None)
        if target is not None:
            yield str(target[0]), mtu, f"{target[0]} ({target[1].name}) across the overlay"
    for vns, dev in vteps(ctx.topo):
        if vns.inode != node.inode and dev.vxlan is not None and dev.vxlan.local:
            yield dev.vxlan.local, 84, f"{dev.vxlan.local}, {vns.name}'s VTEP address"


def failures(ctx: Context) -> list[tuple[str, Namespace, str, Hop]]:
    cached = ctx.cache.get("overlay-failures")
    if isinstance(cached, list):
        return cached
    out = []
    predictor = ctx.predictor
    for pod in endpoints(ctx):
        for dst, size, what in probes(ctx, pod):
            hop = predictor.predict(Flow(pod.name, dst, "icmp", size=size)).first_failure
            if hop is not None:
                out.append((overlay_rule_of(hop), pod, what, hop))
    ctx.cache["overlay-failures"] = out
    return out


def overlay_findings(ctx: Context, ids: set[str] | None) -> Iterator[Finding]:
    seen: set[tuple[str, str, str | None]] = set()  # (rule, culprit) and (rule, fix)
    for rid, pod, what, hop in failures(ctx):
        if (rid not in ids) if ids is not None else rid in OVERLAY_RULES:
            continue
        netns, iface = hop.culprit
        # one finding per fix (a rule on the underlay drops both directions) and one
        # VNI mismatch (recreating both ends with each other's VNI would swap them)
        key = "vni" if rid == "vxlan-vni-mismatch" else " ; ".join(hop.fix)
        if (rid, netns, iface) in seen or (rid, key, None) in seen or any(
            f.rule == rid and f.netns == netns and f.interface == iface for f in ctx.findings
        ):
            continue
        seen |= {(rid, netns, iface), (rid, key, None)}
        ns = ctx.topo.netns_by_name(netns)
        it = ns.iface_by_name(iface) if ns is not None and iface else None
        if ns is None:
            continue
        yield finding(
            rid, "error", Where(ns, it) if it is not None else ns,
            f"{pod.name} -> {what} fails: {hop.decision}",
            f"{hop.cause or hop.decision} (decided at {hop.where} by {hop.source or 'the walk'})."
            f" Predicted from the kernel's tables; `vethtrace path --from {pod.name} "
            f"{what.split()[0].rstrip(',')}` shows every hop, the encapsulated packet's "
            f"marked '{OUTER.strip()}'.",
            list(hop.fix),
        )  # fmt: skip


def _register(rule_id: str, title: str) -> None:
    def fn(ctx: Context) -> Iterator[Finding]:
        return overlay_findings(ctx, None if rule_id == "overlay-path-broken" else {rule_id})

    rule(rule_id, title, phase=1)(fn)


for _id, _title in OVERLAY_RULES.items():
    _register(_id, _title)
