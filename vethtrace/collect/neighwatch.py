"""Watches the next hop's neighbour entry during a ping.

Why poll netlink instead of relying on the neigh tracepoints: the tracepoints
do not say which namespace an entry belongs to on every kernel, and the
verdict hinges on this one entry's states (INCOMPLETE while a bridge swallows
the ARP reply is the seed case). Polling the source namespace's table every
POLL_S gives that timeline everywhere, at the cost of missing states shorter
than the poll interval.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from vethtrace import netns
from vethtrace.model import NeighChange, ProbeEvent, nud_name

POLL_S = 0.01


class NeighWatch:
    """Polls the next hop's neighbour entries in the source namespace (netlink),
    so the timeline exists even where no neighbour tracepoint reports a netns."""

    def __init__(
        self,
        source: str,
        inode: int,
        address: str,
        names: dict[int, str],
        out: Callable[[ProbeEvent], None],
    ) -> None:
        self.source, self.inode, self.address, self.names = source, inode, address, names
        self._out = out
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="neigh-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(3)

    def _run(self) -> None:
        from pyroute2 import IPRoute

        try:
            with netns.entered(self.source):
                ipr = IPRoute()
        finally:
            self._ready.set()
        last: dict[int, str] = {}
        try:
            while True:
                self._poll(ipr, last)
                if self._stop.wait(POLL_S):
                    self._poll(ipr, last)
                    return
        finally:
            ipr.close()

    def _poll(self, ipr: Any, last: dict[int, str]) -> None:
        now = time.monotonic_ns()
        seen: dict[int, tuple[str, str | None]] = {}
        for msg in ipr.get_neighbours(family=socket.AF_INET, dst=self.address):
            if msg.get_attr("NDA_DST") != self.address:
                continue
            st = msg.get("state") or 0
            name = nud_name(st) or "NONE"
            seen[int(msg.get("ifindex"))] = (name, msg.get_attr("NDA_LLADDR"))
        for ifindex in set(last) | set(seen):
            state, lladdr = seen.get(ifindex, ("NONE", None))
            if last.get(ifindex) == state:
                continue
            self._out(
                ProbeEvent(
                    ts_ns=now,
                    point="neigh-state",
                    netns=self.inode,
                    ifindex=ifindex,
                    ifname=self.names.get(ifindex, f"if{ifindex}"),
                    source="netlink",
                    neigh=NeighChange(self.address, last.get(ifindex), state, lladdr),
                )
            )
            last[ifindex] = state
