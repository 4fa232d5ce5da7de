"""Follows rtnetlink notifications in every network namespace, including ones that appear later.

Why one socket per namespace: rtnetlink multicast groups are per namespace,
so a listener sees only the namespace its socket was created in. The monitor
keeps one NETLINK_ROUTE socket bound to the link, address, route and
neighbour groups in each namespace (created from a short-lived thread that
setns()'d there, see vethtrace.netns) and waits on all of them with one
select(). Namespaces are found the way discovery finds them
(topology.namespaces: the start-up one, /run/netns, and every process's
/proc/PID/ns/net), re-scanned every SCAN_S for names and every PROC_SCAN_S
for processes (that walk costs a readlink per process).

A socket keeps its namespace alive after `ip netns del`, so "vanished" is
decided by the scan (its name or process is gone), never by the socket, and
the socket is then closed so the kernel can free the namespace.

What comes out (on `out`, from the monitor's thread) is deliberately raw:
`Notice("added"|"removed"|"dirty"|"neigh", inode, name, ...)`. "dirty" says
something other than a neighbour changed there (link, address, route, FDB,
bridge port): the recorder re-reads that namespace and diffs it, which gives
the meaning ("veth0 enslaved to br0") from the same model discovery builds.
Neighbour notifications arrive as parsed `Neighbour`s, since they are too
frequent to re-read for and their transitions (INCOMPLETE, FAILED) are short.
A receive overrun (ENOBUFS) is reported as "dirty" plus a count in `overruns`:
the re-read still gives the right state, only intermediate steps are lost.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from vethtrace import netns
from vethtrace.errors import UserError
from vethtrace.model import Neighbour
from vethtrace.topology import nlmsg as nl
from vethtrace.topology import parse
from vethtrace.topology.namespaces import NsRef, enumerate_namespaces

SCAN_S = 0.2  # /run/netns and the start-up namespace: a listdir and a stat each
PROC_SCAN_S = 2.0  # namespaces held only by processes: a readlink per process
RCVBUF = 4 << 20  # a burst of thousands of neighbour or route changes fits

# RTMGRP_* bits (linux/rtnetlink.h): LINK (incl. AF_BRIDGE port state), NEIGH
# (incl. FDB), IPV4/IPV6 addresses and routes.
GROUPS = 0x1 | 0x4 | 0x10 | 0x40 | 0x100 | 0x400
RTM_DELNEIGH = 29
SO_RCVBUFFORCE = 33


@dataclass
class Notice:
    """One thing the monitor saw. kind: added | removed | dirty | neigh."""

    kind: str
    inode: int
    name: str
    t: float  # wall clock (time.time())
    neigh: Neighbour | None = None
    deleted: bool = False  # neigh: RTM_DELNEIGH (the entry went away)
    ref: NsRef | None = None  # added: how to reach it


class NetlinkMonitor:
    """NetlinkMonitor(out).start() ... stop(). `out` is called from the monitor's
    thread; it must be quick (put on a queue). `known` maps inode -> name of
    the namespaces followed now; `overruns` counts receive overruns."""

    def __init__(self, out: Callable[[Notice], None]) -> None:
        self._out = out
        self._socks: dict[int, socket.socket] = {}  # inode -> socket
        self._refs: dict[int, NsRef] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netlink-monitor", daemon=True)
        self._last_proc = 0.0
        self.overruns = 0
        self.errors: list[str] = []

    @property
    def known(self) -> dict[int, str]:
        return {i: r.name for i, r in list(self._refs.items())}

    def start(self, timeout: float = 10.0) -> None:
        """Start following; returns once every namespace present now is subscribed."""
        self._thread.start()
        self._ready.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    # --- the thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            self._scan(force_proc=True)
            self._ready.set()
            next_scan = time.monotonic() + SCAN_S
            while not self._stop.is_set():
                wait = max(0.0, next_scan - time.monotonic())
                socks = list(self._socks.items())
                if socks:
                    readable, _, _ = select.select([s for _, s in socks], [], [], wait)
                else:
                    self._stop.wait(wait)
                    readable = []
                by_sock = {s: i for i, s in socks}
                for s in readable:
                    self._receive(by_sock[s], s)
                if time.monotonic() >= next_scan:
                    self._scan()
                    next_scan = time.monotonic() + SCAN_S
        finally:
            self._ready.set()
            for inode in list(self._socks):
                self._close(inode)

    def _scan(self, force_proc: bool = False) -> None:
        """Compare the namespaces there now with those followed: subscribe new
        ones, let go of vanished ones."""
        now = time.monotonic()
        if force_proc or now - self._last_proc >= PROC_SCAN_S:
            refs = enumerate_namespaces([], with_processes=True)
            self._last_proc = now
            current = {r.inode: r for r in refs}
        else:
            refs = enumerate_namespaces([], with_processes=False)
            current = {r.inode: r for r in refs}
            # process-held ones stay while their process does (cheap check on its pid)
            for inode, ref in self._refs.items():
                if inode not in current and not ref.named and _still_held(ref):
                    current[inode] = ref
        for inode in [i for i in self._refs if i not in current]:
            ref = self._refs.pop(inode)
            self._close(inode)
            self._out(Notice("removed", inode, ref.name, time.time()))
        for inode, ref in current.items():
            if inode in self._refs:
                continue
            sock = self._subscribe(ref)
            if sock is None:
                continue
            self._refs[inode] = ref
            self._socks[inode] = sock
            self._out(Notice("added", inode, ref.name, time.time(), ref=ref))

    def _subscribe(self, ref: NsRef) -> socket.socket | None:
        def inside() -> socket.socket | None:
            try:
                with netns.entered(ref.path) as inode:
                    if inode != ref.inode:  # the name now points elsewhere: next scan
                        return None
                    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
            except (OSError, UserError):
                return None  # vanished before we got in
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            sock.bind((0, GROUPS))
            sock.setblocking(False)
            return sock

        try:
            return netns.in_thread(inside, "netlink-subscribe")
        except OSError as exc:
            self.errors.append(f"{ref.name}: cannot subscribe: {exc}")
            return None

    def _close(self, inode: int) -> None:
        sock = self._socks.pop(inode, None)
        if sock is not None:
            sock.close()

    def _receive(self, inode: int, sock: socket.socket) -> None:
        ref = self._refs.get(inode)
        if ref is None:
            return
        dirty = False
        for _ in range(64):  # at most 64 reads per wake-up, then let others have a turn
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # overrun: the state is re-read instead
                    self.overruns += 1
                    dirty = True
                    continue
                raise
            now = time.time()
            for mtype, _flags, off, end in nl.messages(data):
                if mtype in (nl.RTM_NEWNEIGH, RTM_DELNEIGH):
                    family = data[off]
                    if family == nl.AF_BRIDGE:
                        dirty = True  # FDB: part of the namespace's model
                        continue
                    msg = data[off - nl.NLMSG_HDR.size : end]
                    deleted = mtype == RTM_DELNEIGH
                    if deleted:  # parse.neighbours reads RTM_NEWNEIGH only
                        msg = _as_new_neigh(msg)
                    for n in parse.neighbours(msg):
                        self._out(Notice("neigh", inode, ref.name, now, n, deleted))
                elif mtype not in (nl.NLMSG_DONE, nl.NLMSG_ERROR):
                    dirty = True
        if dirty:
            self._out(Notice("dirty", inode, ref.name, time.time()))


def _as_new_neigh(msg: bytes) -> bytes:
    """The same message with type RTM_NEWNEIGH, so the one neighbour parser reads it."""
    ln, _t, flags, seq, pid = nl.NLMSG_HDR.unpack_from(msg, 0)
    return nl.NLMSG_HDR.pack(ln, nl.RTM_NEWNEIGH, flags, seq, pid) + msg[nl.NLMSG_HDR.size :]


def _still_held(ref: NsRef) -> bool:
    """Does one of the pids that held this namespace still hold it?"""
    for pid in ref.pids or []:
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == ref.inode:
                return True
        except OSError:
            continue
    return False
