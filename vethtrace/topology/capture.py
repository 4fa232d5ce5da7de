"""Socket I/O of discovery: enter each namespace, dump it, leave.

A netlink socket stays bound to the namespace it was created in, so a worker
thread setns()'s into a namespace (microseconds, via
vethtrace.netns), opens its sockets, reads the per-namespace sysctl files (they
follow the *thread's* namespace), issues the dumps and moves on; a second pass
asks each namespace the nsids that veth peer resolution needs. The result is raw
bytes (`RawNamespace`) that `parse`/`build` turn into the model without any
privilege: recorded captures (samples/netlink/) replay the same code path.

With many namespaces and a second CPU, a forked child dumps namespaces from
the same queue and streams the bytes back, while this process dumps others
and decodes everything (see `capture`; the two-process machinery is in
fork.py, the /proc and /sys reads in procfs.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from vethtrace import netns
from vethtrace.topology import nlmsg as nl
from vethtrace.topology import pathfacts
from vethtrace.topology.fork import Child, PositionQueue, fork_pays
from vethtrace.topology.namespaces import NsRef
from vethtrace.topology.procfs import (
    br_netfilter_loaded,
    module_present,
    read_iptables_legacy,
    read_sysctls,
)

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12
RECV_SIZE = 65536


@dataclass
class RawNamespace:
    """Everything read from one namespace, still as netlink bytes."""

    inode: int
    name: str
    named: bool = True
    pids: list[int] = field(default_factory=list)
    container: str | None = None
    links: bytes = b""
    addrs: bytes = b""
    routes: bytes = b""
    neigh: bytes = b""
    fdb: bytes = b""
    nsids: bytes = b""  # RTM_GETNSID dump (only where needed): nsids assigned here
    netconf: bytes = b""  # RTM_GETNETCONF answers for "all", IPv4 then IPv6
    nft_chains: bytes | None = None  # None: not asked (nf_tables absent or not loaded)
    nft_rules: bytes | None = None
    iptables_legacy: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    partial: bool = False  # only links were dumped (outside a -n selection)
    rules: bytes = b""  # RTM_GETRULE dump (pathfacts)
    proxies: bytes = b""  # proxy neighbour dump (pathfacts)
    sockets: bytes = b""  # sock_diag dumps, tcp listeners and udp (pathfacts)


@dataclass
class RawCapture:
    namespaces: list[RawNamespace] = field(default_factory=list)
    # (namespace inode, other namespace inode) -> nsid of `other` as seen from `namespace`
    nsids: dict[tuple[int, int], int] = field(default_factory=dict)
    gone: list[int] = field(default_factory=list)  # inodes found but vanished before dumping
    notes: list[str] = field(default_factory=list)
    taken_at: float = 0.0
    kernel: str = ""
    forked: bool = False  # a second process dumped some of the namespaces
    # namespace inode -> capture(decode=...)'s result for it (not part of recordings)
    decoded: dict[int, Any] = field(default_factory=dict)


class Vanished(Exception):
    """The namespace went away (or its holder's inode was recycled) before we got in."""


def open_ns(ref: NsRef) -> int:
    """An fd for the namespace, checked to still be the one we enumerated."""
    try:
        fd = os.open(ref.path, os.O_RDONLY)
    except OSError as exc:
        raise Vanished(exc.strerror or str(exc)) from None
    if os.fstat(fd).st_ino != ref.inode:
        os.close(fd)
        raise Vanished("the name now points at another namespace")
    return fd


def rtnl_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    # Strict checking lets the kernel filter route dumps by table for us.
    with contextlib.suppress(OSError):  # before 4.20: no strict mode, parse filters instead
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
    return sock


def dump(sock: socket.socket, request: bytes, retries: int = 3) -> bytes:
    """Issue one dump request and return the bytes of all its messages (DONE included).
    A dump interrupted by a concurrent change (NLM_F_DUMP_INTR) is retried."""
    for _ in range(retries):
        sock.sendto(request, (0, 0))
        chunks: list[bytes] = []
        interrupted = False
        done = False
        while not done:
            data = sock.recv(RECV_SIZE)
            for mtype, flags, off, _end in nl.messages(data):
                if flags & nl.NLM_F_DUMP_INTR:
                    interrupted = True
                if mtype == nl.NLMSG_DONE:
                    done = True
                elif mtype == nl.NLMSG_ERROR:
                    code = nl.error_code(data, off)
                    if code:
                        raise OSError(code, os.strerror(code))
                    done = True
            chunks.append(data)
        if not interrupted:
            return b"".join(chunks)
    return b"".join(chunks)


# Without per-link statistics: smaller dumps, nothing we use lost.
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFLA_EXT_MASK = 29
LINK_REQ = nl.request(
    nl.RTM_GETLINK,
    nl.IFINFOMSG.pack(nl.AF_UNSPEC, 0, 0, 0, 0)
    + nl.nla(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS.to_bytes(4, "little")),
)
ADDR_REQ = nl.request(nl.RTM_GETADDR, nl.IFADDRMSG.pack(nl.AF_UNSPEC, 0, 0, 0, 0))
# Every table (local and policy tables too: path prediction reads them); parse.routes keeps main.
ROUTE_REQ = nl.request(nl.RTM_GETROUTE, nl.RTMSG.pack(nl.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0))
NEIGH_REQ = nl.request(nl.RTM_GETNEIGH, nl.NDMSG.pack(nl.AF_UNSPEC, 0, 0, 0, 0))
FDB_REQ = nl.request(nl.RTM_GETNEIGH, nl.NDMSG.pack(nl.AF_BRIDGE, 0, 0, 0, 0))
NSID_REQ = nl.request(nl.RTM_GETNSID, nl.RTGENMSG.pack(nl.AF_UNSPEC))
NFT_MSG_NEWCHAIN = 3
NFT_GETCHAIN = (10 << 8) | 4
NFT_GETRULE = (10 << 8) | 7
NFT_CHAIN_REQ = nl.request(NFT_GETCHAIN, nl.NFGENMSG.pack(0, 0, 0))
NFT_RULE_REQ = nl.request(NFT_GETRULE, nl.NFGENMSG.pack(0, 0, 0))

# IFLA_INFO_KIND attributes as they appear in a link dump.
_BRIDGE_KIND = nl.nla(nl.IFLA_INFO_KIND, b"bridge\0")
_VXLAN_KIND = nl.nla(nl.IFLA_INFO_KIND, b"vxlan\0")


def netconf_request(family: int) -> bytes:
    body = nl.RTGENMSG.pack(family) + nl.nla(
        nl.NETCONFA_IFINDEX, nl.NETCONFA_IFINDEX_ALL.to_bytes(4, "little", signed=True)
    )
    return nl.request(nl.RTM_GETNETCONF, body, flags=nl.NLM_F_REQUEST)


NETCONF_REQS = (netconf_request(nl.AF_INET), netconf_request(nl.AF_INET6))


def ask(sock: socket.socket, request: bytes) -> bytes:
    """One request, one answer (not a dump); errors become OSError."""
    sock.sendto(request, (0, 0))
    data = sock.recv(RECV_SIZE)
    for mtype, _flags, off, _end in nl.messages(data):
        if mtype == nl.NLMSG_ERROR and nl.error_code(data, off):
            code = nl.error_code(data, off)
            raise OSError(code, os.strerror(code))
    return data


def dump_here(
    sock: socket.socket,
    raw: RawNamespace,
    full: bool,
    with_nft: bool,
    bridges: bool = True,
    legacy: bool = True,
    sockets: bool = False,
) -> None:
    """Fill raw through `sock`, a NETLINK_ROUTE socket of the namespace the calling
    thread is in (only links and nsids unless `full`); `bridges`/`legacy`:
    br_netfilter / ip_tables exist at all."""
    raw.links = dump(sock, LINK_REQ)
    if not full:
        raw.partial = True
        return
    raw.addrs = dump(sock, ADDR_REQ)
    raw.routes = dump(sock, ROUTE_REQ)
    raw.neigh = dump(sock, NEIGH_REQ)
    for req in NETCONF_REQS:
        with contextlib.suppress(OSError):  # e.g. IPv6 disabled
            raw.netconf += ask(sock, req)
    # Byte searches, not a parse: only to decide what is worth asking. The FDB
    # dump holds the RTNL lock (it alone, of our dumps), so it waits behind
    # every namespace being created or destroyed on the machine: ask it only
    # where forwarding databases exist (bridges, vxlan).
    has_bridge = _BRIDGE_KIND in raw.links
    if has_bridge or _VXLAN_KIND in raw.links:
        try:
            raw.fdb = dump(sock, FDB_REQ)
        except OSError:
            raw.fdb = b""  # no bridge support in this kernel
    raw.sysctls = read_sysctls(bridges and has_bridge)
    # a VXLAN device's own UDP socket is where the path model delivers the outer
    # packet: its namespace's sockets are always read
    pathfacts.dump_here(sock, raw, sockets or _VXLAN_KIND in raw.links)
    if legacy:
        raw.iptables_legacy = read_iptables_legacy()
    if with_nft:
        try:
            with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as nf:
                raw.nft_chains = dump(nf, NFT_CHAIN_REQ)
                # No chains (the usual case), no rules: skip the second dump.
                has_chains = any(
                    t & 0xFF == NFT_MSG_NEWCHAIN for t, _f, _o, _e in nl.messages(raw.nft_chains)
                )
                raw.nft_rules = dump(nf, NFT_RULE_REQ) if has_chains else b""
        except OSError:
            raw.nft_chains = raw.nft_rules = None


def nsid_request(fd: int, seq: int) -> bytes:
    body = nl.RTGENMSG.pack(nl.AF_UNSPEC) + nl.nla(nl.NETNSA_FD, fd.to_bytes(4, "little"))
    return nl.request(nl.RTM_GETNSID, body, flags=nl.NLM_F_REQUEST, seq=seq)


def query_nsid(sock: socket.socket, fd: int) -> int:
    """nsid the socket's namespace has for the namespace behind fd (-1: none).
    RTM_GETNSID only looks up; it never assigns an id."""
    sock.sendto(nsid_request(fd, 7), (0, 0))
    data = sock.recv(RECV_SIZE)
    for mtype, _flags, off, end in nl.messages(data):
        if mtype == nl.RTM_NEWNSID:
            a = nl.attrs(data, off + nl.RTGENMSG.size, end)
            if nl.NETNSA_NSID in a:
                return nl.s32(data, a[nl.NETNSA_NSID])
        elif mtype == nl.NLMSG_ERROR:
            code = nl.error_code(data, off)
            if code:
                raise OSError(code, os.strerror(code))
    return -1


def _enough_fds(needed: int) -> None:
    """One namespace fd and one socket per namespace stay open until the nsid
    questions are answered: raise our own soft RLIMIT_NOFILE when that is short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def capture(
    refs: list[NsRef],
    full: set[int] | None = None,
    with_nft: bool = True,
    nsid_pairs: Callable[[RawCapture], tuple[dict[int, set[int]], set[int]]] | None = None,
    fork: bool | None = None,
    decode: Callable[[RawNamespace], Any] | None = None,
    sockets: bool = False,
) -> RawCapture:
    """Dump every namespace in refs (only links for those not in `full`, when given),
    then ask the kernel what `nsid_pairs(capture)` says peer resolution needs: the
    nsid of each (namespace, other namespace) pair, and which namespaces' list of
    assigned nsids to read (RawNamespace.nsids). `decode(raw)`, when given, is
    applied to each dump as soon as it is here; results in RawCapture.decoded.

    With `fork` (default: when `fork_pays`), a child process dumps namespaces
    from the same queue as this one and streams them back; this process decodes
    them between its own dumps, so dumping and decoding overlap on two CPUs. The
    child does not decode: model objects cost more to pickle and unpickle than
    to decode from the bytes. The nsid questions are asked from here (a socket
    in a namespace the child dumped costs a setns and a socket() call).
    RawCapture.forked says whether a child's results were used. `sockets`: also
    the listening sockets (pathfacts.dump_here).
    """
    cap = RawCapture(taken_at=time.time(), kernel=os.uname().release)
    nft = with_nft and module_present("nf_tables")
    br_nf = br_netfilter_loaded()
    legacy = module_present("ip_tables")
    _enough_fds(2 * len(refs) + 64)
    fds: dict[int, int] = {}  # opened here before any fork: both processes use them
    socks: dict[int, socket.socket] = {}  # kept open for the nsid questions
    results: dict[int, RawNamespace | str] = {}  # position in refs -> dump or note

    def dump_one(i: int) -> RawNamespace | str:
        """Dump refs[i] (the calling thread enters its namespace); a note if we cannot."""
        ref = refs[i]
        try:
            netns._setns(fds[ref.inode])
        except OSError as exc:
            stale = exc.errno == errno.EINVAL
            why = "not a namespace: a stale entry?" if stale else exc.strerror
            return f"netns {ref.name}: cannot enter ({why})"
        raw = RawNamespace(ref.inode, ref.name, ref.named, list(ref.pids), ref.container)
        try:
            socks[ref.inode] = sock = rtnl_socket()
            dump_here(
                sock, raw, full is None or ref.inode in full, nft, br_nf, legacy, sockets
            )
        except OSError as exc:
            return f"netns {ref.name}: skipped ({exc.strerror or exc})"
        return raw

    def take(i: int, result: RawNamespace | str) -> None:
        results[i] = result
        if decode is not None and isinstance(result, RawNamespace):
            cap.decoded[result.inode] = decode(result)

    def dump_all(positions: Iterable[int], child: Child | None) -> None:
        for i in positions:
            take(i, dump_one(i))
            if child is not None:
                for j, result in child.ready():
                    take(j, result)
        if child is not None:
            for j, result in child.rest():
                take(j, result)
            if child.completed:
                cap.forked = True
            else:  # the child failed: what it took and did not send is dumped here
                for i in [i for i in todo if i not in results]:
                    take(i, dump_one(i))

    def ask_nsids(pairs: list[tuple[int, set[int]]], listing: set[int]) -> None:
        by_inode = {raw.inode: raw for raw in cap.namespaces}
        for inode, others in pairs:
            sock = socks.get(inode)
            if sock is None:  # dumped by the child
                try:
                    netns._setns(fds[inode])
                    socks[inode] = sock = rtnl_socket()
                except OSError:
                    continue
            for other in sorted(others):
                if other in fds:
                    with contextlib.suppress(OSError):
                        cap.nsids[(inode, other)] = query_nsid(sock, fds[other])
            if inode in listing:
                with contextlib.suppress(OSError):
                    by_inode[inode].nsids = dump(sock, NSID_REQ)

    child: Child | None = None
    queue: PositionQueue | None = None
    try:
        for i, ref in enumerate(refs):
            try:
                fds[ref.inode] = open_ns(ref)
            except Vanished as exc:
                results[i] = f"netns {ref.name}: vanished before discovery ({exc})"
        todo = [i for i, ref in enumerate(refs) if ref.inode in fds]
        if fork if fork is not None else fork_pays(len(todo)):
            queue = PositionQueue.of(todo)
        if queue is None:
            netns.in_thread(lambda: dump_all(todo, None), "vethtrace-discover")
        else:
            shared = queue

            def child_work(send: Callable[[object], None]) -> None:
                for i in shared:
                    send((i, dump_one(i)))

            child = Child(child_work)
            netns.in_thread(lambda: dump_all(shared, child), "vethtrace-discover")
        for i in range(len(refs)):
            result = results[i]
            if isinstance(result, str):
                cap.notes.append(result)
                cap.gone.append(refs[i].inode)
            else:
                cap.namespaces.append(result)
        if nsid_pairs is not None:
            wanted, listing = nsid_pairs(cap)
            dumped = {raw.inode for raw in cap.namespaces}
            jobs = sorted((i, wanted.get(i, set())) for i in set(wanted) | listing if i in dumped)
            netns.in_thread(partial(ask_nsids, jobs, listing), "vethtrace-discover")
    finally:
        if child is not None:
            child.close()
        if queue is not None:
            queue.close()
        for sock in socks.values():
            sock.close()
        for fd in fds.values():
            os.close(fd)
    return cap
