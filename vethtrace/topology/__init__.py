"""Topology discovery: every namespace, interface, veth pair, bridge, address,
route, neighbour and forwarding sysctl, read through netlink.

    discover(netns=None) -> Topology

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
from vethtrace.model import Topology
from vethtrace.topology import build as _build
from vethtrace.topology import capture as _capture
from vethtrace.topology.namespaces import enumerate_namespaces, lookup

if TYPE_CHECKING:
    from vethtrace.topology.query import (
        L2Domain,
        RouteHit,
        l2_domain,
        owner_of_ip,
        owners_of_ip,
        route_lookup,
    )

_QUERY = {"L2Domain", "RouteHit", "l2_domain", "owner_of_ip", "owners_of_ip", "route_lookup"}


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
    "l2_domain",
    "owner_of_ip",
    "owners_of_ip",
    "route_lookup",
]


def discover(netns: list[str] | None = None, firewall: bool = True) -> Topology:
    """Read the live topology (needs root: it enters every namespace).

    With `netns`, only those namespaces are read in full; namespaces holding the
    veth peers of their interfaces are added with `partial=True` (interfaces
    only), so a selection still shows where its cables lead. Unknown names raise
    UserError. `firewall=False` skips reading nftables chains.
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
    )
    cap.notes[:0] = notes
    topo = _build.build(cap)
    from vethtrace.topology.runtimes import annotate

    annotate(topo)
    if full is not None:
        _keep_selection(topo, full)
    return topo


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
