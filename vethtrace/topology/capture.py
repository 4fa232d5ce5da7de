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
and decodes everything (see `capture`, `Child`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from vethtrace import netns
from vethtrace.topology import nlmsg as nl
from vethtrace.topology import pathfacts
from vethtrace.topology.namespaces import NsRef

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12
RECV_SIZE = 65536

# Namespace-wide sysctls that change how frames are forwarded or answered.
# ip_forward, rp_filter, proxy_arp and IPv6 forwarding come from netlink
# (RTM_GETNETCONF); the rest only exist as files, read relative to one
# directory fd each.
# Why so frugal: every namespace has its own /proc/sys/net/ipv4 (and bridge)
# dentry under the same parent and name, so each lookup of that component
# scans the dentries of *all* namespaces (~0.3 us each, under a spinlock):
# one lookup per directory per namespace, and net/bridge only where it can
# matter (br_netfilter loaded and the namespace has a bridge).
IPV4_FILES = (
    "net/ipv4",
    [
        "conf/all/arp_ignore",
        "conf/all/arp_filter",
        "conf/all/arp_accept",
        "conf/all/arp_announce",
        "conf/all/accept_local",
        "conf/all/route_localnet",
        "icmp_echo_ignore_all",
        "icmp_echo_ignore_broadcasts",
    ],
)
BRIDGE_NF = (
    "net/bridge",
    ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"],
)


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


def module_present(name: str) -> bool:
    """Whether kernel code `name` is there without loading anything: asking
    nfnetlink for nf_tables while it is an unloaded module would make the kernel
    load it, a state change we must not cause (and then no rules exist anyway)."""
    if os.path.exists(f"/sys/module/{name}"):
        return True  # loaded (or built in with parameters)
    if not os.path.exists("/proc/modules"):
        return True  # no loadable modules: built in or absent, asking loads nothing
    try:
        with open(f"/lib/modules/{os.uname().release}/modules.builtin") as f:
            return f"/{name}.ko" in f.read()
    except OSError:
        return False


def read_iptables_legacy() -> list[str]:
    """x_tables (iptables-legacy) tables of the calling thread's namespace."""
    try:
        fd = os.open("/proc/thread-self/net/ip_tables_names", os.O_RDONLY)
    except OSError:
        return []
    try:
        return sorted(os.read(fd, 4096).decode().split())
    finally:
        os.close(fd)


def read_sysctls(bridges: bool) -> dict[str, str]:
    """Sysctl files of the calling *thread's* namespace (/proc/sys/net follows
    current->nsproxy, unlike /proc/net which follows the thread group leader).
    Missing files are left out (net/bridge exists only with br_netfilter)."""
    out: dict[str, str] = {}
    for rel, names in (IPV4_FILES, BRIDGE_NF) if bridges else (IPV4_FILES,):
        try:
            dfd = os.open(f"/proc/sys/{rel}", os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            for name in names:
                try:
                    fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
                except OSError:
                    continue
                try:
                    out[f"{rel}/{name}".replace("/", ".")] = os.read(fd, 64).decode().strip()
                finally:
                    os.close(fd)
        finally:
            os.close(dfd)
    return out


# IFLA_INFO_KIND attributes as they appear in a link dump.
_BRIDGE_KIND = nl.nla(nl.IFLA_INFO_KIND, b"bridge\0")
_VXLAN_KIND = nl.nla(nl.IFLA_INFO_KIND, b"vxlan\0")


def br_netfilter_loaded() -> bool:
    # br_netfilter may be built in (no /sys/module entry): ask where it shows.
    return os.path.exists("/proc/sys/net/bridge")


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
    pathfacts.dump_here(sock, raw)
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


# Below this many namespaces a second process costs more (fork, pickling) than it saves.
FORK_MIN_NAMESPACES = 64
CHILD_TIMEOUT = 60.0  # seconds; a child this late is killed and its share dumped here


def fork_pays(n_refs: int) -> bool:
    """Whether to dump in two processes. Only from a single-threaded process: a
    child forked while other threads run (ping's sniffers, watch's UI) could
    inherit a lock one of them holds and never finish."""
    return (
        n_refs >= FORK_MIN_NAMESPACES
        and threading.active_count() == 1
        and len(os.sched_getaffinity(0)) >= 2
    )


class PositionQueue:
    """Namespace positions shared by two processes: a pipe holding each as 4 bytes.
    Whoever is free takes the next one (a 4-byte read is served whole, to one
    reader), so a heavy namespace (a hub with 500 ports) does not leave the
    other process idle, as a fixed split would."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def of(cls, positions: list[int]) -> PositionQueue | None:
        """The queue, or None when the positions do not fit in a pipe (no fork then)."""
        data = b"".join(i.to_bytes(4, "little") for i in positions)
        read, write = os.pipe()
        try:
            if len(data) > 65536:
                fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, len(data))
            os.set_blocking(write, False)
            if os.write(write, data) == len(data):
                return cls(read)
        except OSError:
            pass
        finally:
            os.close(write)  # readers see EOF once the queue is empty
        os.close(read)
        return None

    def __iter__(self) -> Iterator[int]:
        while chunk := os.read(self.fd, 4):
            yield int.from_bytes(chunk, "little")

    def close(self) -> None:
        os.close(self.fd)


class Child:
    """A forked process that runs `work(send)` and streams what it `send`s back
    through a pipe (each object pickled, length-prefixed), so the caller can
    use the first results while the child is still working.

    Why a process: a dump is half kernel time, half Python; two threads only
    take turns on the GIL (measured slower), two processes use both CPUs. The
    child never returns into the caller's code: it leaves through os._exit (no
    atexit handlers, no flushing of inherited buffers, no test runner
    machinery). If it fails, dies or stalls, `completed` stays False and the
    caller does the missing work itself.
    """

    def __init__(self, work: Callable[[Callable[[object], None]], None]) -> None:
        import pickle  # here, not at the top: small runs never fork (~2 ms of start-up)

        self._pickle = pickle
        read, write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child
            status = 1
            try:
                os.close(read)

                def send(obj: object) -> None:
                    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
                    _write_all(write, len(data).to_bytes(4, "little") + data)

                work(send)
                send(_END)
                status = 0
            finally:
                os._exit(status)
        os.close(write)
        self._read = read
        self._buf = bytearray()
        self._eof = False
        self.completed = False  # the end mark arrived: everything sent was received

    def ready(self) -> list[Any]:
        """What the child has sent so far, without waiting."""
        while not self._eof and select.select([self._read], [], [], 0)[0]:
            self._fill()
        return self._records()

    def rest(self) -> Iterator[Any]:
        """Everything else the child sends, until it ends, dies or CHILD_TIMEOUT
        seconds pass (then close() kills it)."""
        deadline = time.monotonic() + CHILD_TIMEOUT
        while True:
            yield from self._records()
            if self._eof or self.completed:
                break
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                break
            self._fill()
        if self.completed and self.reap(kill=False) != 0:
            self.completed = False

    def _fill(self) -> None:
        chunk = os.read(self._read, 1 << 20)
        self._buf += chunk
        self._eof = not chunk

    def _records(self) -> list[Any]:
        out = []
        while len(self._buf) >= 4:
            size = int.from_bytes(self._buf[:4], "little")
            if len(self._buf) < 4 + size:
                break
            obj = self._pickle.loads(self._buf[4 : 4 + size])
            del self._buf[: 4 + size]
            if obj == _END:
                self.completed = True
            else:
                out.append(obj)
        return out

    def reap(self, kill: bool) -> int:
        """Wait for the child, killing it first when `kill`; its exit status."""
        if self.pid <= 0:
            return -1
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        _pid, status = os.waitpid(self.pid, 0)
        self.pid = -1
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        """Never leave the child behind (an error or Ctrl-C here, a timeout)."""
        self.reap(kill=True)
        os.close(self._read)


_END = "end"  # the child's last message


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def capture(
    refs: list[NsRef],
    full: set[int] | None = None,
    with_nft: bool = True,
    nsid_pairs: Callable[[RawCapture], tuple[dict[int, set[int]], set[int]]] | None = None,
    fork: bool | None = None,
    decode: Callable[[RawNamespace], Any] | None = None,
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
    RawCapture.forked says whether a child's results were used.
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
            dump_here(sock, raw, full is None or ref.inode in full, nft, br_nf, legacy)
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
