"""Raw capture -> Topology: decode every namespace, then resolve veth peers.

Peer resolution is the subtle part. A veth reports its peer's ifindex
(IFLA_LINK, omitted when it equals its own) and, when the peer is in another
namespace, that namespace's *nsid as seen from here* (IFLA_LINK_NETNSID).
nsids are local numbers, so we first pair ends structurally (B has a veth at
the peer ifindex whose own link points back at us), then confirm each
candidate namespace with the kernel's nsid for it (RTM_GETNSID by fd, asked
during capture). What stays unmatched is explained: the nsid is no longer
assigned (namespace gone), or it is but no namespace we can see carries it
(unknown: e.g. held by a process we may not inspect).
"""

from __future__ import annotations

from collections import defaultdict

from vethtrace.model import IfaceKey, Namespace, Topology
from vethtrace.topology import parse, pathfacts
from vethtrace.topology.capture import RawCapture, RawNamespace

Parsed = dict[int, list[parse.Link]]  # namespace inode -> its links
Decoded = tuple[list[parse.Link], Namespace]


def decode(raw: RawNamespace) -> Decoded:
    """One namespace's dumps -> its links (with the references peer resolution
    still has to follow) and its Namespace, peers not yet resolved. Discovery
    runs this in the process that made the dumps (capture(decode=...))."""
    links = parse.links(raw.links, raw.inode)
    return links, namespace(raw, links)


def parse_links(cap: RawCapture) -> Parsed:
    return {
        raw.inode: cap.decoded[raw.inode][0]
        if raw.inode in cap.decoded
        else parse.links(raw.links, raw.inode)
        for raw in cap.namespaces
    }


def _peer_ifindex(link: parse.Link) -> int:
    # The kernel omits IFLA_LINK when the peer's ifindex equals our own.
    return link.link if link.link is not None else link.iface.key.ifindex


def _veth_index(parsed: Parsed) -> dict[tuple[int, int], list[int]]:
    """(ifindex, peer ifindex) -> namespaces holding such a cross-namespace veth end."""
    index: dict[tuple[int, int], list[int]] = defaultdict(list)
    for inode, links in parsed.items():
        for link in links:
            if link.iface.kind == "veth" and link.link_nsid is not None:
                index[(link.iface.key.ifindex, _peer_ifindex(link))].append(inode)
    return index


def candidates(parsed: Parsed) -> dict[tuple[int, int], list[int]]:
    """(namespace inode, veth ifindex) -> other namespaces whose veth pairs with it
    (has our peer's ifindex and points back at ours)."""
    index = _veth_index(parsed)
    out: dict[tuple[int, int], list[int]] = {}
    for inode, links in parsed.items():
        for link in links:
            if link.iface.kind != "veth" or link.link_nsid is None:
                continue
            me = link.iface.key.ifindex
            found = index.get((_peer_ifindex(link), me), [])
            out[(inode, me)] = [other for other in found if other != inode]
    return out


def nsid_queries(parsed: Parsed) -> tuple[dict[int, set[int]], set[int]]:
    """What peer resolution needs the kernel to answer: namespace -> namespaces
    whose nsid (as seen from it) to ask, and the namespaces whose list of
    assigned nsids to read (those with a veth no visible namespace pairs with:
    is its peer's namespace gone, or just invisible to us?).

    A pairing is asked about from one end only (a veth has one peer, so the
    answer settles both ends; see resolve_peers): from the namespace with more
    cross-namespace veths, so that a hub asks about its 500 leaves through
    one socket instead of 500 leaves asking about the hub through 500."""
    out: dict[int, set[int]] = defaultdict(set)
    listing: set[int] = set()
    cands = candidates(parsed)
    ends: dict[int, int] = defaultdict(int)  # namespace -> its cross-namespace veths
    for inode, _ifindex in cands:
        ends[inode] += 1
    for (inode, _ifindex), others in cands.items():
        out[inode].update(b for b in others if (ends[inode], -inode) > (ends[b], -b))
        if not others:
            listing.add(inode)
    # Stacked devices (macvlan, vlan, ...) whose lower device is in another
    # namespace: any namespace with an interface at that ifindex may be it.
    holders: dict[int, list[int]] = defaultdict(list)
    for inode, links in parsed.items():
        for link in links:
            holders[link.iface.key.ifindex].append(inode)
    for inode, links in parsed.items():
        for link in links:
            if link.iface.kind != "veth" and link.link_nsid is not None and link.link:
                out[inode].update(h for h in holders.get(link.link, []) if h != inode)
    return {k: v for k, v in out.items() if v}, listing


def namespace(raw: RawNamespace, links: list[parse.Link]) -> Namespace:
    ns = Namespace(
        inode=raw.inode,
        name=raw.name,
        named=raw.named,
        pids=list(raw.pids),
        container=raw.container,
        interfaces=[link.iface for link in links],
        partial=raw.partial,
    )
    if raw.partial:
        return ns
    addrs = parse.addresses(raw.addrs)
    for iface in ns.interfaces:
        iface.addresses = addrs.get(iface.key.ifindex, [])
    ns.routes = parse.routes(raw.routes)
    ns.neighbours = parse.neighbours(raw.neigh)
    ns.fdb = parse.fdb(raw.fdb)
    ns.sysctls = parse.netconf(raw.netconf)
    ns.sysctls.update(raw.sysctls)
    ns.sysctls = dict(sorted(ns.sysctls.items()))
    ns.firewall = parse.firewall(raw.nft_chains, raw.nft_rules, raw.iptables_legacy)
    pathfacts.decode_into(ns, raw)
    return ns


def build(cap: RawCapture) -> Topology:
    """The Topology of a capture. What capture() decoded already (cap.decoded) is
    used as is, and becomes part of the result: build such a capture only once."""
    decoded = {raw.inode: cap.decoded.get(raw.inode) or decode(raw) for raw in cap.namespaces}
    parsed = {inode: links for inode, (links, _ns) in decoded.items()}
    topo = Topology(notes=list(cap.notes), taken_at=cap.taken_at, kernel=cap.kernel)
    topo.namespaces = [decoded[raw.inode][1] for raw in cap.namespaces]
    assigned = {raw.inode: parse.nsid_list(raw.nsids) for raw in cap.namespaces}
    resolve_peers(topo, parsed, cap.nsids, assigned)
    return topo


def resolve_peers(
    topo: Topology,
    parsed: Parsed,
    nsids: dict[tuple[int, int], int],
    assigned: dict[int, set[int]],
) -> None:
    """Set Interface.peer / peer_state for veths and Interface.link for stacked devices."""
    cands = candidates(parsed)
    # (namespace, nsid) -> the namespace it names, from the kernel's answers
    by_nsid = {(a, nsid): b for (a, b), nsid in nsids.items() if nsid >= 0}
    present = {ns.inode: {i.key.ifindex for i in ns.interfaces} for ns in topo.namespaces}
    at = {(inode, lk.iface.key.ifindex): lk for inode, links in parsed.items() for lk in links}

    def settled_from(b: int, inode: int, link: parse.Link) -> bool:
        """Our end was not asked about namespace b: does b's answer about us
        (when asked) confirm that its end, at our peer ifindex, points here?"""
        if (b, inode) not in nsids:
            return True  # neither end asked (e.g. an old capture): trust pairing
        theirs = at.get((b, _peer_ifindex(link)))
        return theirs is not None and theirs.link_nsid == nsids[(b, inode)]

    for inode, links in parsed.items():
        for link in links:
            iface = link.iface
            if iface.kind != "veth":
                # IFLA_LINK naming the device itself means "no lower" only within
                # its namespace: a macvlan moved into a pod often has the ifindex
                # of its lower in the node (both 2)
                if link.link is not None and (
                    link.link_nsid is not None or link.link != iface.key.ifindex
                ):
                    nsid = link.link_nsid
                    where = inode if nsid is None else by_nsid.get((inode, nsid))
                    if where is not None:
                        iface.link = IfaceKey(where, link.link)
                continue
            if link.link_nsid is None:  # both ends in this namespace
                if link.link is not None and link.link in present[inode]:
                    iface.peer = IfaceKey(inode, link.link)
                else:
                    iface.peer_state = "missing"
                continue
            peer_ifindex = _peer_ifindex(link)
            options = cands.get((inode, iface.key.ifindex), [])
            if link.link_nsid < 0:  # the kernel could not name the peer's namespace
                confirmed = options
            else:
                confirmed = [b for b in options if nsids.get((inode, b)) == link.link_nsid]
            if not confirmed:  # not asked from this end: the other end's answer decides
                confirmed = [
                    b for b in options if (inode, b) not in nsids and settled_from(b, inode, link)
                ]
            if len(confirmed) == 1:
                iface.peer = IfaceKey(confirmed[0], peer_ifindex)
                continue
            if len(confirmed) > 1:
                iface.peer_state = "unknown"
                topo.notes.append(
                    f"{topo.label(iface.key)}: peer ambiguous between namespaces {confirmed}"
                )
                continue
            target = by_nsid.get((inode, link.link_nsid))
            if target is not None and target in present:
                # We see the namespace but not the interface: it went away meanwhile.
                iface.peer_state = "missing"
            elif inode in assigned and assigned[inode] and link.link_nsid not in assigned[inode]:
                iface.peer_state = "netns-gone"
            else:
                iface.peer_state = "unknown"
