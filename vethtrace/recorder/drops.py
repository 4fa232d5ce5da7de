"""Kernel drops, counted per second and place instead of written one by one.

Why aggregate: a misconfiguration drops every packet of a flow, 100 k a
second is realistic, and a line per drop would fill the recording with the
same fact. What `report` needs is *where* (namespace, interface), *why*
(the kernel's drop reason and the function that freed it), *how many* and
*when* (per second), and one packet to show what was dropped. So each
second's drops become one "drops" record per (namespace, interface, reason,
location), with the first packet of that group as its sample. Benign frees
(points.is_benign_drop) are not recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vethtrace.model import ProbeEvent, to_dict
from vethtrace.points import DROP_POINT, is_benign_drop


class DropCounter:
    """add(ev) for every probe event; flush() returns the "drops" records of the
    seconds that are over. `name(inode)` names a namespace."""

    def __init__(self, name: Callable[[int], str]) -> None:
        self._name = name
        # kernel CLOCK_MONOTONIC -> wall clock, measured once
        self._offset = time.time() - time.monotonic_ns() / 1e9
        self._buckets: dict[tuple[int, int, str, str, str], dict[str, Any]] = {}
        self.drops = 0  # recorded (non-benign) drops
        self.benign = 0

    def add(self, ev: ProbeEvent) -> None:
        if ev.point != DROP_POINT:
            return
        if is_benign_drop(ev):
            self.benign += 1
            return
        self.drops += 1
        second = int(ev.ts_ns / 1e9 + self._offset)
        location = (ev.location or "?").split("+")[0]
        key = (second, ev.netns, ev.ifname or "", ev.drop_reason or "?", location)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = {
                "t": float(second),
                "netns": ev.netns,
                "name": "",  # named at flush: the namespace may be newer than our names
                "ifname": ev.ifname,
                "reason": ev.drop_reason or "?",
                "location": location,
                "count": 1,
                "sample": to_dict(ev.packet) if ev.packet is not None else None,
            }
        else:
            bucket["count"] += 1

    def flush(self, everything: bool = False) -> list[dict[str, Any]]:
        """The records of seconds before the current one (all with everything=True)."""
        now = int(time.time())
        done = [k for k in self._buckets if everything or k[0] < now - 1]
        out = [self._buckets.pop(k) for k in sorted(done)]
        for rec in out:  # drop unset sample fields, as recordings do for events
            rec["name"] = self._name(rec["netns"])
            if rec["sample"]:
                rec["sample"] = {k: v for k, v in rec["sample"].items() if v is not None}
        return out
