"""Build steps for overlay labs: vxlan links and their static FDB entries.

A flannel-style node has a vxlan device tied to its underlay link, with no
learning: each remote node is known by a static FDB entry (remote VTEP MAC ->
remote underlay address) plus a neighbour entry and an onlink route (those
are ordinary [[neigh]] and [[route]] tables). The links are made after the veth
pairs (the underlay `dev` must exist); the FDB entries after the links are up,
with the routes and neighbours. Kept apart from builder.py, which holds the
generic steps; both run through builder's per-namespace STEPS.
"""

from __future__ import annotations

import socket
from typing import Any

from pyroute2 import IPRoute

from vethtrace.lab.scenario import Scenario

NUD_PERMANENT = 0x80
NTF_SELF = 0x2  # the entry belongs to the vxlan device itself (`bridge fdb ... self`)


def links(ipr: IPRoute, scn: Scenario, ns: str, real: dict[str, str]) -> None:
    """`ip link add NAME type vxlan id ID [local L] [dev D] dstport P [no]learning`."""
    from vethtrace.lab import builder  # builder lists this step: imported when it runs

    for link in scn.links_in(ns):
        spec = link.vxlan
        if link.kind != "vxlan" or spec is None:
            continue
        opts: dict[str, Any] = {
            "vxlan_id": spec.id,
            "vxlan_port": spec.dstport,
            "vxlan_learning": int(spec.learning),
        }
        if spec.local:
            opts["vxlan_local"] = spec.local
        if spec.dev:
            opts["vxlan_link"] = builder._index(ipr, spec.dev)
        builder._add(ipr, link, kind="vxlan", **opts)


def fdb(ipr: IPRoute, scn: Scenario, ns: str, real: dict[str, str]) -> None:
    """`bridge fdb append MAC dev DEV dst DST self permanent` for each [[fdb]]."""
    from vethtrace.lab import builder

    for e in (e for e in scn.fdb if e.netns == ns):
        builder._do(
            f"adding fdb entry {e.mac} dst {e.dst} on {e.dev}",
            ipr.neigh,
            "append",
            family=socket.AF_BRIDGE,
            ifindex=builder._index(ipr, e.dev),
            lladdr=e.mac,
            dst=e.dst,
            state=NUD_PERMANENT,
            flags=NTF_SELF,
        )
