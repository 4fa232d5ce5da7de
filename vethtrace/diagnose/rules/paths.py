"""Rules judged on predicted paths (diagnose/path): for every namespace that
reaches the rest of the host through a veth, macvlan or similar (containers,
pods, VMs' taps), the path to its default gateway, to the other addresses on
its L2 segment and to an address beyond its node (the far end of the node's
default route) must succeed, forward and back. A path that fails becomes a
finding naming the decision that lost it, under the id of the kind of
decision (missing-masquerade, proxy-arp-missing, ...).

These rules run after the static ones (phase 1): a failure whose culprit a
static rule already names (veth-peer-down, arp-ignore, ...) is not reported
twice. Paths the model cannot finish (*unknown* hops: an unreadable ruleset,
a match it does not evaluate, traffic leaving the host) raise nothing.

Cost: on a segment of more than SEGMENT_ALL endpoints, each endpoint checks
its RING_PEERS next neighbour(s) in a ring ordered by address (so every
endpoint is checked as a source and as a destination) plus every address it
holds a static neighbour entry for: linear in the segment, not quadratic.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

from vethtrace.diagnose.path import Flow, Hop, PathPrediction
from vethtrace.diagnose.rules.base import Context, Where, finding, join_names, rule
from vethtrace.model import Finding, Namespace

# Devices through which a namespace hangs off the host rather than forwarding for it.
LINK_KINDS = ("veth", "macvlan", "macvtap", "ipvlan", "ipvtap", "tap", "tun")
SEGMENT_ALL = 8  # segments up to this many endpoints: every pair
RING_PEERS = 1


@dataclass(frozen=True)
class Probe:
    src: Namespace
    dst: str
    proto: str  # icmp, or arp for a gateway nobody holds (Calico's 169.254.1.1)
    what: str  # "its default gateway 10.0.0.1", ...


@dataclass
class Failure:
    probe: Probe
    hop: Hop  # the decision that lost the packet


def endpoints(ctx: Context) -> list[Namespace]:
    """Namespaces whose links to the rest are all veth/macvlan/tap-like, that
    hold an IPv4 address on one and forward nothing themselves."""
    out = []
    for ns in ctx.topo.namespaces:
        if ns.partial or ctx.forwarding(ns):
            continue
        links = [i for i in ns.interfaces if i.kind != "loopback" and i.name != "lo"]
        if not links or any(i.kind not in LINK_KINDS for i in links):
            continue
        if any(ctx.v4(i) for i in links):
            out.append(ns)
    return out


def probes(ctx: Context, ns: Namespace) -> Iterator[Probe]:
    seen: set[str] = set()
    for route in ns.routes:
        if route.family != 4 or route.dst != "default" or not route.gateway:
            continue
        gw = route.gateway
        if gw in seen:
            continue
        seen.add(gw)
        oif = ns.iface(route.oif)
        owner = ctx.owner_of(IPv4Address(gw), ctx.domain(oif.key)) if oif else None
        if owner is None:
            # a gateway nobody holds is answered by proxy ARP (Calico): ARP is the test
            yield Probe(ns, gw, "arp", f"its default gateway {gw}")
        else:
            yield Probe(ns, gw, "icmp", f"its default gateway {gw} ({owner.ns.name})")
        node = owner.ns if owner is not None else _far_namespace(ctx, ns, oif)
        if node is None or oif is None:
            continue
        beyond = [(d, f"{d}, routed by {node.name} ({who})")
                  for d, who in _routed_sibling(ctx, node, ns)]
        far = _default_gateway(node)
        if far is not None:
            beyond.append((far, f"{far} beyond its node ({node.name}'s default gateway)"))
        else:  # a node without a default route: the first other stack on its uplinks
            beyond += [(d, f"{d} beyond its node ({who}, on {node.name}'s uplink)")
                       for d, who in _uplink_peers(ctx, node, ctx.domain_id(oif.key))]
        for dst, what in beyond:
            if dst not in seen:
                seen.add(dst)
                yield Probe(ns, dst, "icmp", what)
    for w in ctx.up_interfaces(ns):
        for dst, who in _segment_peers(ctx, w):
            if dst not in seen:
                seen.add(dst)
                yield Probe(ns, dst, "icmp", f"{dst} on its segment ({who})")


def _far_namespace(ctx: Context, ns: Namespace, oif: object) -> Namespace | None:
    """The namespace at the other end of a veth (the node of a routed pod)."""
    from vethtrace.model import Interface

    if not isinstance(oif, Interface) or oif.peer is None:
        return None
    w = ctx.where(oif.peer)
    return w.ns if w is not None else None


def _node_of(ctx: Context, ns: Namespace) -> tuple[Namespace, IPv4Address, int] | None:
    """(node, ns's address, its L2 domain) for an endpoint whose default gateway is
    held by, or sits behind a veth into, another namespace."""
    for route in ns.routes:
        if route.family != 4 or route.dst != "default" or not route.gateway:
            continue
        oif = ns.iface(route.oif)
        if oif is None or not ctx.v4(oif):
            continue
        owner = ctx.owner_of(IPv4Address(route.gateway), ctx.domain(oif.key))
        node = owner.ns if owner is not None else _far_namespace(ctx, ns, oif)
        if node is not None:
            return node, ctx.v4(oif)[0].ip, ctx.domain_id(oif.key)
    return None


def _routed_sibling(ctx: Context, node: Namespace, ns: Namespace) -> list[tuple[str, str]]:
    """Another endpoint of the same node on another L2 segment (ptp and Calico pods,
    each on a veth of its own): the next one in a ring by address, so pod-to-pod
    traffic the node routes is checked, linearly in the number of pods."""
    cache = ctx.cache.get("node-pods")
    if not isinstance(cache, dict):
        by_node: dict[int, list[tuple[IPv4Address, str, int]]] = {}
        for e in endpoints(ctx):
            got = _node_of(ctx, e)
            if got is not None:
                by_node.setdefault(got[0].inode, []).append((got[1], e.name, got[2]))
        built: dict[int, tuple[list[tuple[IPv4Address, str, int]], dict[str, int]]] = {}
        cache = ctx.cache["node-pods"] = built
        for inode, found in by_node.items():
            found.sort()
            if len({p[2] for p in found}) >= 2:  # pods on more than one segment
                built[inode] = (found, {p[1]: k for k, p in enumerate(found)})
    entry = cache.get(node.inode)
    if entry is None or ns.name not in entry[1]:
        return []
    pods, position = entry
    start = position[ns.name]
    mine = pods[start]
    for k in range(1, len(pods)):
        addr, name, domain = pods[(start + k) % len(pods)]
        if domain != mine[2]:
            return [(str(addr), name)]
    return []


def _uplink_peers(ctx: Context, node: Namespace, pod_domain: int) -> list[tuple[str, str]]:
    """For a node with no default route, what lies "beyond" it is on its other
    links: the first other stack (by address, in the node's subnet) on each up link
    of the node that is not the pod's own segment. One per link: linear cost."""
    out: list[tuple[str, str]] = []
    for w in ctx.up_interfaces(node):
        if ctx.domain_id(w.iface.key) == pod_domain or w.iface.kind == "bridge":
            continue  # a bridge of the node is another pod segment, not its uplink
        mine = ctx.v4(w.iface)
        for a, inode, name in _stacks_of_domain(ctx, ctx.domain_id(w.iface.key), w.iface.key):
            if inode != node.inode and any(a in m.network for m in mine):
                out.append((str(a), name))
                break
    return out


def _default_gateway(ns: Namespace) -> str | None:
    return next(
        (r.gateway for r in ns.routes if r.family == 4 and r.dst == "default" and r.gateway),
        None,
    )


def _segment_peers(ctx: Context, w: Where) -> list[tuple[str, str]]:
    """(address, namespace name) of other stacks on w's segment, in w's subnets."""
    mine = ctx.v4(w.iface)
    stacks = _stacks_of_domain(ctx, ctx.domain_id(w.iface.key), w.iface.key)

    def peer(entry: tuple[IPv4Address, int, str]) -> bool:
        return entry[1] != w.ns.inode and any(entry[0] in m.network for m in mine)

    if len(stacks) <= SEGMENT_ALL:
        return [(str(a), n) for a, i, n in stacks if peer((a, i, n))]
    # a ring by address: the next RING_PEERS peers after our own address
    start = bisect.bisect_right(stacks, (min(m.ip for m in mine), 1 << 62, ""))
    chosen: list[tuple[IPv4Address, int, str]] = []
    for k in range(len(stacks)):
        entry = stacks[(start + k) % len(stacks)]
        if peer(entry):
            chosen.append(entry)
            if len(chosen) == RING_PEERS:
                break
    static = {
        n.address for n in w.ns.neighbours
        if n.ifindex == w.iface.key.ifindex and n.family == 4
        and n.state in ("PERMANENT", "NOARP")
    }  # fmt: skip
    if static:
        chosen += [e for e in stacks if str(e[0]) in static and e not in chosen and peer(e)]
    return [(str(a), n) for a, _i, n in chosen]


def _stacks_of_domain(ctx: Context, domain: int, key: object) -> list[tuple[IPv4Address, int, str]]:
    """(address, netns inode, netns name) of every up stack in an L2 domain,
    sorted by address; computed once per domain per check run."""
    cache = ctx.cache.setdefault("segment-stacks", {})
    assert isinstance(cache, dict)
    if domain not in cache:
        out = []
        for other in ctx.domain(key):  # type: ignore[arg-type]
            if ctx.is_enslaved(other) or not other.iface.admin_up:
                continue
            for a in ctx.v4(other.iface):
                if not a.ip.is_loopback:
                    out.append((a.ip, other.ns.inode, other.ns.name))
        cache[domain] = sorted(out)
    return cache[domain]


def failures(ctx: Context) -> list[Failure]:
    """Every failing probe, predicted once per check run."""
    cached = ctx.cache.get("path-failures")
    if isinstance(cached, list):
        return cached
    out: list[Failure] = []
    predictor = ctx.predictor
    for ns in endpoints(ctx):
        for p in probes(ctx, ns):
            pred: PathPrediction = predictor.predict(Flow(ns.name, p.dst, p.proto))
            hop = pred.first_failure
            if hop is not None and not _deliberate(ctx, ns, p.dst, hop):
                out.append(Failure(p, hop))
    ctx.cache["path-failures"] = out
    return out


def _deliberate(ctx: Context, src: Namespace, dst: str, hop: Hop) -> bool:
    """A container runtime's isolation dropping what it is meant to drop (an internal
    network's way out, ICC off, one network to another through the runtime's own
    isolation chains): rules/containers.py says so as info, not an error."""
    daemon = ctx.topo.netns_by_name(hop.netns)
    if hop.step != "nft" or daemon is None:
        return False
    from vethtrace.diagnose.rules.containers import RUNTIME_CHAINS, isolating_network

    parts = hop.source.split()
    chain = parts[3] if len(parts) > 3 and parts[0] == "nft" else ""
    if chain in RUNTIME_CHAINS and "ISOLATION" in chain:
        return True  # the runtime's isolation between its networks (Docker, Podman)
    return bool(daemon.runtime_networks) and isolating_network(daemon, src, dst) is not None


def rule_of(hop: Hop, ctx: Context | None = None) -> str:
    """The check rule id for the kind of decision that failed (with ctx, a drop in
    a forward firewall written for bridged traffic too is netfilter-forward-drop,
    see rules/bridge.py's bridged_by_design)."""
    step, src, dec = hop.step, hop.source, hop.decision
    if step == "route":
        if hop.blame is not None:
            return "missing-masquerade"
        if "lo is down" in dec:
            return "loopback-down"
        return "missing-route"
    if step == "forward":
        return "forwarding-disabled"
    if step == "rp_filter":
        return "rp-filter-strict"
    if step == "nft":
        if "br_netfilter" in dec and ctx is not None and _bridged_by_design(ctx, hop):
            return "netfilter-forward-drop"
        if src.startswith("nft bridge") or "br_netfilter" in dec:
            return "bridge-netfilter-drop"
        return "netfilter-forward-drop" if dec.startswith("forward") else "path-broken"
    if step == "arp":
        for key, rid in (
            ("proxy_arp", "proxy-arp-missing"),
            ("arp_ignore", "arp-ignore"),
            ("arp_filter", "arp-filter"),
            ("master", "address-on-bridge-port"),
        ):
            if key in src:
                return rid
        return "path-broken"
    if step == "neigh" and "lladdr" in src:
        return "neighbour-wrong-mac"
    if step == "bridge":
        if "flood" in src or ("learning" in src and "state" not in src):
            return "bridge-port-flood-off"
        if "isolated" in src:
            return "isolated-ports"
        if "state DOWN" in src:
            return "bridge-down"
        if "state disabled" in src:  # a port down, or up without carrier (peer down)
            return "veth-peer-down" if hop.blame is not None else "interface-down"
        if "state" in src:
            return "bridge-port-not-forwarding"
    if step == "veth":
        return "mtu-mismatch" if src.startswith("mtu") else "veth-peer-down"
    if step == "mtu":
        return "mtu-mismatch"
    if step == "deliver" and "held by" in hop.cause:
        return "duplicate-address"
    return "path-broken"


def _bridged_by_design(ctx: Context, hop: Hop) -> bool:
    from vethtrace.diagnose.rules.bridge import bridged_by_design

    ns = ctx.topo.netns_by_name(hop.netns)
    br = ns.iface_by_name(hop.interface) if ns is not None and hop.interface else None
    return br is not None and ns is not None and bridged_by_design(ctx, Where(ns, br))


def _covered(ctx: Context, netns: str, iface: str | None, dst: str) -> bool:
    """Does a static finding (warning or worse) already name this culprit, or speak
    of this destination in the namespace that decided (e.g. same-subnet names the
    gateway that the one connected route sends out of the wrong interface)?"""
    return any(
        f.netns == netns and f.severity in ("error", "warning")
        and (f.interface == iface or f.interface is None or iface is None
             or re.search(rf"(?<![\d.]){re.escape(dst)}(?![\d.]|/\d)", f.explanation))
        for f in ctx.findings
    )  # fmt: skip


def path_findings(ctx: Context, ids: set[str] | None) -> Iterator[Finding]:
    """Findings for failures whose kind is in ids (None: every kind that is not
    one of PATH_RULES' own, i.e. path-broken and the static rules' ids)."""
    groups: dict[tuple[str, str, str | None, str], list[Failure]] = {}
    for f in failures(ctx):
        rid = rule_of(f.hop, ctx)
        if (rid not in ids) if ids is not None else (rid in PATH_RULES and rid != "path-broken"):
            continue
        netns, iface = f.hop.culprit
        if _covered(ctx, netns, iface, f.probe.dst) or any(
            g.rule == rid and g.netns in (netns, f.hop.netns, f.probe.src.name)
            for g in ctx.findings
        ):
            continue  # a static rule already names it
        # one finding per culprit and remedy (the same missing masquerade loses
        # every pod's reply, each decided for its own address)
        key = " ".join(f.hop.fix) if f.hop.fix else f.hop.decision
        groups.setdefault((rid, netns, iface, key), []).append(f)
    for (rule_id, netns, iface, _key), fails in groups.items():
        decision = fails[0].hop.decision
        ns = ctx.topo.netns_by_name(netns)
        it = ns.iface_by_name(iface) if ns is not None and iface else None
        if ns is None:
            continue
        first = fails[0]
        paths = [f"{f.probe.src.name} -> {f.probe.what}" for f in fails]
        shown = join_names(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        hop = first.hop
        place = f"{hop.netns}/{hop.interface}" if hop.interface else hop.netns
        yield finding(
            rule_id,
            "error",
            Where(ns, it) if it is not None else ns,
            f"{shown} fails: {decision}",
            f"{hop.cause or decision} (decided at {place} by {hop.source or 'the walk'}). "
            f"Predicted from the kernel's tables; `vethtrace path --from "
            f"{first.probe.src.name} {first.probe.dst}` shows every hop.",
            list(hop.fix),
        )


PATH_RULES = {
    "missing-masquerade": "a node forwards pod traffic out of its uplink without masquerading "
    "and the outside has no route back",
    "proxy-arp-missing": "a routed veth's gateway is answered by no one: proxy_arp is off on "
    "the host side",
    "netfilter-forward-drop": "a forward-hook rule or policy drops traffic a container "
    "exchanges with its gateway, segment or the outside",
    "neighbour-wrong-mac": "a permanent neighbour entry holds a MAC the address's owner "
    "does not have",
    "bridge-port-flood-off": "a bridge port neither learns nor gets floods: frames for what "
    "is behind it have nowhere to go",
    "path-broken": "any other decision that loses a container's traffic to its gateway, "
    "segment or the outside (under the static rule's id when one covers that kind of "
    "decision but did not fire)",
}


def _register(rule_id: str, title: str) -> None:
    def fn(ctx: Context) -> Iterator[Finding]:
        if rule_id != "path-broken":
            return path_findings(ctx, {rule_id})
        # failures of a kind a static rule covers, which that rule did not see
        return path_findings(ctx, None)

    rule(rule_id, title, phase=1)(fn)


for _id, _title in PATH_RULES.items():
    _register(_id, _title)
