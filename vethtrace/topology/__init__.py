"""Topology discovery: every namespace, interface, veth pair, bridge, address,
route, neighbour and forwarding sysctl, read through netlink.

    discover(netns=None) -> Topology
    discover_between(source, target) -> Topology   (what a ping between them can cross)
    named_namespaces() -> Topology                 (inodes and names only, no netlink)

Layers (each testable alone): `namespaces` finds and names namespaces;
`capture` does the socket I/O and returns raw netlink bytes; `parse`/`build`
turn bytes into the model and resolve veth peers across namespaces (pure, so
recorded dumps in samples/netlink/ replay without root); `query` answers the
questions other stages ask of a Topology (who owns an IP, which route, which
L2 domain); `snapshot` is the JSON form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vethtrace.errors import UserError
from vethtrace.model import Namespace, Topology
from vethtrace.topology import build as _build
from vethtrace.topology import capture as _capture
from vethtrace.topology.namespaces import enumerate_namespaces, lookup

if TYPE_CHECKING:
    from vethtrace.topology.query import (
        L2Domain,
        RouteHit,
        l2_domain,
        l2_reach,
        netns_names,
        owner_of_ip,
        owners_of_ip,
        route_lookup,
    )

_QUERY = {
    "L2Domain",
    "RouteHit",
    "l2_domain",
    "l2_reach",
    "netns_names",
    "owner_of_ip",
    "owners_of_ip",
    "route_lookup",
}


def __getattr__(name: str) -> Any:
    """The query helpers load on first use: `topo --json` never needs them (nor
    ipaddress, which they import), and every command start counts."""
    if name in _QUERY:
        from vethtrace.topology import query

        return getattr(query, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "L2Domain",
    "RouteHit",
    "discover",
    "discover_between",
    "l2_domain",
    "l2_reach",
    "named_namespaces",
    "netns_names",
    "owner_of_ip",
    "owners_of_ip",
    "route_lookup",
]


def discover(
    netns: list[str] | None = None, firewall: bool = True, sockets: bool = False
) -> Topology:
    """Read the live topology (needs root: it enters every namespace).

    With `netns`, only those namespaces are read in full; namespaces holding the
    veth peers of their interfaces are added with `partial=True` (interfaces
    only), so a selection still shows where its cables lead. Unknown names raise
    UserError. `firewall=False` skips reading nftables chains. `sockets=True` also
    reads listening sockets (sock_diag), which only a tcp/udp path needs.
    """
    notes: list[str] = []
    refs = enumerate_namespaces(notes)
    full: set[int] | None = None
    if netns:
        full = set()
        for wanted in netns:
            ref = lookup(refs, wanted)
            if ref is None:
                raise UserError(f"no network namespace named {wanted!r} (see `ip netns list`)")
            full.add(ref.inode)
    cap = _capture.capture(
        refs,
        full=full,
        with_nft=firewall,
        nsid_pairs=lambda c: _build.nsid_queries(_build.parse_links(c)),
        decode=_build.decode,
        sockets=sockets,
    )
    cap.notes[:0] = notes
    topo = _build.build(cap)
    if firewall:
        from vethtrace.topology.pathfacts import attach_rulesets

        attach_rulesets(topo, refs)
    from vethtrace.topology.runtimes import annotate

    annotate(topo)
    if full is not None:
        _keep_selection(topo, full)
    return topo


def discover_between(source: str, target: str, rounds: int = 4) -> Topology:
    """The namespaces traffic between source and target can cross, not the whole host.

    Reading every namespace costs time proportional to the machine (hundreds of
    containers), so start from the two ends and follow veth cables outwards:
    each round adds the namespaces the previous one connects to (discover adds
    peers' namespaces as partial ones; reading those in full reveals their
    bridges' other ports and where those lead)."""
    selection = {source, target}
    topo = discover(sorted(selection))
    for _ in range(rounds):
        more = {ns.name for ns in topo.namespaces} - selection
        if not more:
            break
        selection |= more
        topo = discover(sorted(selection))
    return topo


def named_namespaces() -> Topology:
    """The initial namespace and those named in /run/netns, with nothing but
    their inode and name: no netlink, cheap enough to re-read while tracing
    (to name the namespaces events come from)."""
    refs = enumerate_namespaces([], with_processes=False)
    return Topology(namespaces=[Namespace(r.inode, r.name) for r in refs])


def _keep_selection(topo: Topology, full: set[int]) -> None:
    """Drop namespaces outside the selection except those holding peers of its veths."""
    keep = set(full)
    for ns in topo.namespaces:
        if ns.inode in full:
            keep.update(i.peer.netns for i in ns.interfaces if i.peer is not None)
    # The selection first (in discovery order), then where its cables lead.
    topo.namespaces = [ns for ns in topo.namespaces if ns.inode in full] + [
        ns for ns in topo.namespaces if ns.inode in keep and ns.inode not in full
    ]
