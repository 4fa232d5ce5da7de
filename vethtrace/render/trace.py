"""Lines for `vethtrace trace`: one aligned row per kernel event, JSON per line, summary.

Namespaces are shown by name (people know `vt-host`, not 4026532451); live,
the names come from /run/netns and are re-read when an unknown inode shows
up, at most once a second, because namespaces come and go while tracing.
"""

from __future__ import annotations

import collections
import json
import time
from typing import Any

from rich.console import Console
from rich.text import Text

from vethtrace.model import ProbeEvent, Topology, to_dict
from vethtrace.points import benign_drop_reason


class NetnsNames:
    """inode -> namespace name for trace's lines, by Topology.netns_name.

    Live (no topology given): over the namespaces named in /run/netns and the
    initial one, re-read when an unknown inode shows up, at most once a
    second. Given a topology (a recording's), over its namespaces, fixed:
    those of the machine that recorded, not of this one."""

    def __init__(self, topo: Topology | None = None) -> None:
        self._live = topo is None
        self._topo = topo if topo is not None else Topology()
        self._known: dict[int, str] = {}  # answers for inodes the topology has
        self._refreshed = 0.0
        if self._live:
            self.refresh()

    def refresh(self) -> None:
        from vethtrace.topology import named_namespaces

        self._topo = named_namespaces()
        self._known = {}
        self._refreshed = time.monotonic()

    def name(self, inode: int) -> str:
        name = self._known.get(inode)
        if name is not None:
            return name
        if self._live and time.monotonic() - self._refreshed > 1.0:
            self.refresh()
        name = self._topo.netns_name(inode)
        if self._topo.netns(inode) is not None:
            self._known[inode] = name
        return name


POINT_STYLE = {"kfree_skb": "bold red", "consume_skb": "dim", "br_fdb_update": "magenta"}


def detail(ev: ProbeEvent) -> str:
    """What happened, in words: packet summary, neighbour change, fdb learning."""
    if ev.neigh is not None:
        n = ev.neigh
        change = f"{n.old_state or '?'} -> {n.new_state or '?'}"
        if ev.point == "neigh_create":
            change = "created"
        elif ev.point != "neigh_update":
            change = n.new_state or "?"
        err = f" err {n.err}" if n.err else ""
        ll = f" lladdr {n.lladdr}" if n.lladdr and ev.point == "neigh_update" else ""
        return f"neigh {n.address} {change}{ll}{err}"
    if ev.point == "br_fdb_update":
        return f"fdb learn {ev.extra.get('mac')} on port {ev.extra.get('port')}"
    if ev.point == "net_dev_xmit":
        rc = ev.extra.get("rc", 0)
        return f"xmit done rc={rc}" + (" (dropped by the device)" if rc else "")
    return ev.packet.describe() if ev.packet else "-"


def line(ev: ProbeEvent, t0: int, names: NetnsNames) -> Text:
    rel = (ev.ts_ns - t0) / 1e9
    text = Text(f"{rel:10.6f} ", style="dim")
    text.append(f"{names.name(ev.netns)[:16]:<16} ", style="cyan")
    text.append(f"{(ev.ifname or '-')[:10]:<10} ", style="bold")
    text.append(f"{ev.point:<21} ", style=POINT_STYLE.get(ev.point, ""))
    text.append(detail(ev))
    benign = benign_drop_reason(ev) if ev.drop_reason else None
    if benign:
        text.append(f"  freed ({ev.drop_reason}: {benign})", style="dim")
    elif ev.drop_reason:
        text.append(f"  DROP {ev.drop_reason}", style="bold red")
    if ev.location and ev.point in ("kfree_skb", "consume_skb"):
        text.append(f" @{ev.location}", style="dim")
    if ev.cloned:
        text.append(" (clone)", style="dim")
    return text


HEADER = f"{'TIME(s)':>10} {'NETNS':<16} {'IFACE':<10} {'POINT':<21} WHAT"


def json_line(ev: ProbeEvent, names: NetnsNames) -> str:
    d: dict[str, Any] = to_dict(ev)
    d["netns_name"] = names.name(ev.netns)
    if ev.packet is not None:
        d["summary"] = ev.packet.describe()
    return json.dumps(d, separators=(",", ":"))


class Summary:
    """Counts for the end of a trace: drops by reason, benign frees apart
    (points.BENIGN_DROPS: a ping's replies are not drops)."""

    def __init__(self) -> None:
        self.events = 0
        self.drops: collections.Counter[str] = collections.Counter()
        self.benign = 0

    def add(self, ev: ProbeEvent) -> None:
        self.events += 1
        if ev.drop_reason:
            if benign_drop_reason(ev):
                self.benign += 1
            else:
                self.drops[ev.drop_reason] += 1

    def render(self, console: Console, lost: int, seconds: float) -> None:
        text = Text(f"{self.events} events in {seconds:.1f} s, ")
        text.append(f"{lost} lost", style="bold red" if lost else "green")
        console.print(text)
        if self.drops:
            drops = ", ".join(f"{r} x{n}" for r, n in self.drops.most_common())
            console.print(Text("drops by reason: ", style="bold").append(drops, style="red"))
        else:
            console.print("drops by reason: none")
        if self.benign:
            console.print(
                Text(f"benign frees (not drops): {self.benign}", style="dim"), highlight=False
            )
