"""`--nftrace`: ask the kernel's own nftables tracer which rule decided a
packet's fate, in every namespace in scope.

Per namespace, in a thread that entered it:
1. a netlink socket joined to NFNLGRP_NFTRACE (opened first, so nothing
   traced is missed; a socket keeps the namespace it was made in);
2. a libnftables context, kept for the whole run, loads ONE table of ours
   per family (`ip`, and `bridge` where the namespace has a bridge), named
   `vethtrace_trace_<pid>`, `flags owner` (the kernel deletes it when our
   socket closes, even after SIGKILL; nftrace_state.py keeps a record for
   kernels without the flag). Its base chains hook prerouting and output
   (bridge: prerouting and output) at priority -2147483648, the lowest there
   is, so the mark is set before any other chain of those hooks runs (raw
   -300, conntrack -200, filter 0, Docker's and CNI's chains) and all their
   verdicts are traced; nftrace stays on the skb through forward, input and
   postrouting, but veth scrubs it when a packet changes namespace, hence a
   table in each. The chains' only rules are `<filter> meta nftrace set 1`
   (nftrace_match.py), so packets that do not match cost one rule lookup.
3. rule text and iptables forms come from nftrace_rules.py (nft's listing).

Why our own socket rather than `nft monitor trace` per namespace: no child
process per namespace, no text to parse, and the event's header bytes tell
which packet it was (nftrace_msg.py). A single reader thread selects on all
sockets; `poll()` turns what it read into NftraceEvents.
"""

from __future__ import annotations

import errno
import os
import queue
import selectors
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vethtrace import netns as netnsmod
from vethtrace.collect import nftrace_match, nftrace_msg, nftrace_rules, nftrace_state
from vethtrace.collect.filter import Filter, compile_filter
from vethtrace.errors import UserError
from vethtrace.model import NftraceEvent

PRIORITY = -2147483648  # NF_IP_PRI_FIRST: before every other chain at the hook
HOOKS = {"ip": ("prerouting", "output"), "bridge": ("prerouting", "output")}
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 270, 1
RCVBUF = 4 << 20


@dataclass
class Scope:
    """A namespace to trace in: name (as shown), path to open, inode, and
    whether it has a bridge (then the bridge family is traced too)."""

    name: str
    path: str
    inode: int
    bridge: bool = False


@dataclass
class _Ns:
    scope: Scope
    nft: Any
    sock: socket.socket
    families: list[str] = field(default_factory=list)
    chains: dict[nftrace_rules.Key, nftrace_rules.ChainInfo] = field(default_factory=dict)
    ifnames: dict[int, str] = field(default_factory=dict)
    reloaded: set[tuple[str, str, str, int]] = field(default_factory=set)


def table_script(table: str, family: str, matches: list[str], owner: bool) -> str:
    """The nft commands that add our table for one family (one transaction)."""
    flags = " { flags owner; }" if owner else ""
    lines = [f"add table {family} {table}{flags}"]
    for hook in HOOKS[family]:
        lines.append(
            f"add chain {family} {table} {hook} {{ type filter hook {hook} "
            f"priority {PRIORITY}; policy accept; }}"
        )
        lines += [
            f"add rule {family} {table} {hook} {m} meta nftrace set 1".replace("  ", " ")
            for m in matches
        ]
    return "\n".join(lines)


class NftraceSession:
    """Start, poll, close (or use as a context manager). Not thread-safe;
    `close()` is idempotent and always removes what `start()` added."""

    def __init__(self, flt: Filter | str | list[str] | None, scopes: list[Scope]) -> None:
        self.filter = flt if isinstance(flt, Filter) else compile_filter(flt)
        self.matches = {fam: nftrace_match.rules_for(self.filter, fam) for fam in HOOKS}
        self.scopes = scopes
        self.table = nftrace_state.table_name()
        self.state = nftrace_state.RunState(os.getpid())
        self.notes: list[str] = []
        self.lost = 0
        self._ns: list[_Ns] = []
        self._queue: queue.SimpleQueue[tuple[int, int, bytes]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._trace_hooks: dict[tuple[int, int], str] = {}  # (netns, trace id) -> hook
        # The kernel sends the packet's headers and devices once per trace id
        # (its first event); later events of that pass get them from here.
        self._trace_pkt: dict[tuple[int, int], tuple[Any, Any, Any]] = {}
        self.timings: dict[str, float] = {}

    # --- set-up and tear-down ---------------------------------------------------

    def start(self) -> None:
        t0 = time.monotonic()
        removed = nftrace_state.recover()
        if removed:
            self.notes.append("removed tables left by an earlier run: " + "; ".join(removed))
        try:
            for scope in self.scopes:
                ns = self._open(scope)
                if ns is not None:
                    self._ns.append(ns)
        except BaseException:
            self.close()
            raise
        self._reader = threading.Thread(target=self._read, name="vethtrace-nftrace", daemon=True)
        self._reader.start()
        self.timings["nftrace_setup"] = time.monotonic() - t0

    def _open(self, scope: Scope) -> _Ns | None:
        try:
            fd = os.open(scope.path, os.O_RDONLY)
        except OSError as exc:
            self.notes.append(f"{scope.name}: not traced ({exc.strerror})")
            return None
        families = ["ip"] + (["bridge"] if scope.bridge else [])
        try:
            return netnsmod.in_thread(lambda: self._inside(fd, scope, families), "vethtrace-nft")
        finally:
            os.close(fd)

    def _inside(self, fd: int, scope: Scope, families: list[str]) -> _Ns:
        try:
            import nftables
        except ImportError:
            raise UserError("--nftrace needs python3-nftables (run ./run setup)") from None
        netnsmod._setns(fd)
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nftrace_msg.NETLINK_NETFILTER)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((0, 0))
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, nftrace_msg.NFNLGRP_NFTRACE)
            sock.setblocking(False)
            nft = nftables.Nftables()
            ns = _Ns(scope, nft, sock)
            for family in families:
                self.state.add(scope.name, scope.inode, family, self.table)
                err = self._load(nft, family)
                if err:
                    raise UserError(f"--nftrace: cannot add our table in {scope.name}: {err}")
                ns.families.append(family)
            ns.chains = nftrace_rules.load_here(nft)
            return ns
        except BaseException:
            sock.close()
            raise

    def _load(self, nft: Any, family: str) -> str | None:
        matches = self.matches[family]
        if not matches:
            return None
        rc, _out, err = nft.cmd(table_script(self.table, family, matches, owner=True))
        if rc != 0 and ("owner" in err or "Operation not supported" in err):
            rc, _out, err = nft.cmd(table_script(self.table, family, matches, owner=False))
            if rc == 0:
                self.notes.append(
                    "this kernel has no owner flag for tables: a killed run leaves its "
                    "table until the next run or `vethtrace nftrace cleanup`"
                )
        return None if rc == 0 else (err.strip().splitlines() or [f"nft status {rc}"])[0]

    def close(self) -> None:
        """Delete our tables (while each namespace's context still owns them),
        stop the reader, forget the record."""
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=1.0)
            self._reader = None
        for ns in self._ns:
            for family in ns.families:
                rc, _o, err = ns.nft.cmd(f"delete table {family} {self.table}")
                if rc != 0 and "No such file" not in err:
                    self.notes.append(
                        f"{ns.scope.name}: could not delete table {family} "
                        f"{self.table}: {err.strip()}"
                    )
            ns.families.clear()
            ns.sock.close()
        self._ns.clear()
        self.state.remove()

    def __enter__(self) -> NftraceSession:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- events -------------------------------------------------------------------

    def _read(self) -> None:
        sel = selectors.DefaultSelector()
        for i, ns in enumerate(self._ns):
            sel.register(ns.sock, selectors.EVENT_READ, i)
        try:
            while not self._stop.is_set():
                for key, _mask in sel.select(timeout=0.05):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    while True:
                        try:
                            data = sock.recv(1 << 16)
                        except BlockingIOError:
                            break
                        except OSError as exc:
                            if exc.errno == errno.ENOBUFS:
                                self.lost += 1
                                continue
                            return
                        self._queue.put((time.monotonic_ns(), key.data, data))
        except (OSError, ValueError):  # sockets closed under us at exit
            return
        finally:
            sel.close()

    def poll(self) -> list[NftraceEvent]:
        """Every trace event read since the last call, our own table's left out."""
        out: list[NftraceEvent] = []
        while True:
            try:
                ts, i, data = self._queue.get_nowait()
            except queue.Empty:
                return out
            if i >= len(self._ns):
                continue
            ns = self._ns[i]
            for raw in nftrace_msg.decode(data):
                if raw.table == self.table:
                    continue
                out.append(self._event(ns, ts, raw))

    def _event(self, ns: _Ns, ts: int, raw: nftrace_msg.RawTrace) -> NftraceEvent:
        key = (raw.family, raw.table, raw.chain)
        chain = ns.chains.get(key)
        if raw.handle is not None and (chain is None or raw.handle not in chain.rules):
            self._reload(ns, (*key, raw.handle))
            chain = ns.chains.get(key)
        hook = chain.hook if chain else None
        tid = (ns.scope.inode, raw.trace_id)
        if hook:
            self._trace_hooks[tid] = hook
        else:  # a chain reached by jump: the hook of the base chain this pass began in
            hook = self._trace_hooks.get(tid)
        if raw.packet is not None or raw.iif or raw.oif:
            if len(self._trace_pkt) > 4096:  # passes end quickly: keep recent ones
                self._trace_pkt.clear()
                self._trace_hooks.clear()
            self._trace_pkt[tid] = (raw.packet, raw.iif, raw.oif)
        else:
            raw.packet, raw.iif, raw.oif = self._trace_pkt.get(tid, (None, None, None))
        rule = iptables = None
        if raw.kind == "policy":
            rule = f"policy {raw.verdict}"
            if chain is not None and chain.by_iptables:
                iptables = f"-P {raw.chain} {raw.verdict.upper()}"
        elif chain is not None and raw.handle is not None:
            rule = chain.rules.get(raw.handle)
            iptables = chain.iptables.get(raw.handle)
        return NftraceEvent(
            ts_ns=ts,
            netns=ns.scope.inode,
            family=raw.family,
            table=raw.table,
            chain=raw.chain,
            kind=raw.kind,
            verdict=raw.verdict,
            trace_id=raw.trace_id,
            handle=raw.handle,
            target=raw.target,
            hook=hook,
            iif=self._ifname(ns, raw.iif),
            oif=self._ifname(ns, raw.oif),
            rule=rule,
            iptables=iptables,
            packet=raw.packet,
        )

    def _reload(self, ns: _Ns, what: tuple[str, str, str, int]) -> None:
        """A rule we have not listed (added after start): list again, once per rule."""
        if what in ns.reloaded:
            return
        ns.reloaded.add(what)
        ns.chains = _in(ns, lambda: nftrace_rules.load_here(ns.nft)) or ns.chains

    def _ifname(self, ns: _Ns, ifindex: int | None) -> str | None:
        if not ifindex:
            return None
        if ifindex not in ns.ifnames:
            name = _in(ns, lambda: socket.if_indextoname(ifindex))
            ns.ifnames[ifindex] = name or f"if{ifindex}"
        return ns.ifnames[ifindex]


def _in(ns: _Ns, fn: Any) -> Any:
    """fn() in a thread inside ns's namespace; None when that fails (gone)."""
    try:
        fd = os.open(ns.scope.path, os.O_RDONLY)
    except OSError:
        return None

    def inside() -> Any:
        netnsmod._setns(fd)
        return fn()

    try:
        return netnsmod.in_thread(inside, "vethtrace-nft")
    except OSError:
        return None
    finally:
        os.close(fd)


def scopes(topo: Any, inodes: Iterable[int]) -> list[Scope]:
    """Scopes for these namespaces of a topology: how to open each (its
    /run/netns name, the initial one, or a process holding it) and whether it
    has a bridge."""
    out = []
    for inode in sorted(set(inodes)):
        ns = topo.netns(inode)
        if ns is None:
            continue
        if ns.named or ns.name == netnsmod.ROOT:
            path = netnsmod.path_of(ns.name)
        elif ns.pids:
            path = f"/proc/{ns.pids[0]}/ns/net"
        else:
            continue
        bridge = any(i.kind == "bridge" for i in ns.interfaces)
        out.append(Scope(topo.netns_name(inode), path, inode, bridge))
    return out


def scopes_named(names: list[str]) -> list[Scope]:
    """Scopes for trace/watch's -n names, or every namespace without them
    (the initial one, /run/netns, process-held ones). Both families
    everywhere: knowing which namespaces have bridges would need a
    discovery, and a bridge chain where no bridge is costs nothing."""
    from vethtrace.topology.namespaces import enumerate_namespaces

    refs = enumerate_namespaces([])
    if names:
        wanted = {netnsmod.inode_of(n) for n in names}
        refs = [r for r in refs if r.inode in wanted]
    return [Scope(r.name, r.path, r.inode, bridge=True) for r in refs]
