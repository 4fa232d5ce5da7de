"""Lines for `vethtrace trace`: one aligned row per kernel event, JSON per line, summary.

Namespaces are shown by name (people know `vt-host`, not 4026532451); the
name map is topology's (/run/netns names, containers as their runtime calls
them) and is refreshed when an unknown inode shows up, at most once a second,
because namespaces come and go while tracing.
"""

from __future__ import annotations

import collections
import json
import os
import time
from typing import Any

from rich.console import Console
from rich.text import Text

from vethtrace.clock import Clock
from vethtrace.model import ID_FIELDS, Namespace, ProbeEvent, Topology, hex_id, to_dict
from vethtrace.points import benign_drop_reason


class NetnsNames:
    """inode -> namespace name for trace's lines, by Topology.netns_name.

    Live (no topology given): over /run/netns names, containers as their
    runtime names them (docker:web) and other process-held namespaces
    (pid:N(comm)), re-read when an unknown inode shows up, at most once a
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
        """/run/netns names, then containers as their runtime names them (docker:web)
        and other process-held namespaces (pid:N(comm)): topology's own labels."""
        from vethtrace.topology.namespaces import enumerate_namespaces

        refs = enumerate_namespaces([])
        self._topo = Topology(namespaces=[Namespace(r.inode, r.name) for r in refs])
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


# Column widths (time, namespace, interface, point) by terminal width: an ICMP
# line is ~107 characters wide, and a terminal wraps it mid-word. Narrower
# terminals get shorter times, names and words; what still does not fit is cut
# with an ellipsis, never wrapped. Piped output (no terminal) has no width:
# the wide layout, never cut.
LAYOUTS = (  # (at least this wide, (time, netns, iface, point) columns, level)
    (110, (10, 16, 10, 21), 0),
    (90, (8, 12, 9, 18), 1),
    (0, (7, 10, 8, 15), 2),
)
# Kernel tracepoint names, shortened where a narrow column cannot hold them.
SHORT_POINTS = {
    "net_dev_queue": "dev_queue",
    "net_dev_start_xmit": "dev_start_xmit",
    "net_dev_xmit": "dev_xmit",
    "netif_receive_skb": "netif_rcv_skb",
    "neigh_event_send_done": "neigh_send_done",
    "neigh_timer_handler": "neigh_timer",
    "neigh_update_done": "neigh_upd_done",
}


def line_width(console: Console) -> int | None:
    """The width lines must fit, or None when not writing to a terminal. The
    terminal's own size, not COLUMNS: shells export that at start-up, and a
    terminal resized since (or a tmux pane) has another width."""
    if not console.is_terminal:
        return None
    try:
        return os.get_terminal_size(console.file.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return console.width


def _layout(width: int | None) -> tuple[tuple[int, int, int, int], int]:
    for least, columns, level in LAYOUTS:
        if width is None or width >= least:
            return columns, level
    return LAYOUTS[-1][1], LAYOUTS[-1][2]


def _point(point: str, room: int) -> str:
    return point if len(point) <= room else SHORT_POINTS.get(point, point)[:room]


def _detail(ev: ProbeEvent, level: int) -> str:
    """detail(ev), in fewer words for narrower terminals."""
    p = ev.packet
    if level >= 2 and p is not None and p.icmp_type in (0, 8) and ev.neigh is None:
        name = "echo req" if p.icmp_type == 8 else "echo reply"
        return f"ICMP {p.ip_src} > {p.ip_dst} {name} #{p.icmp_seq}"
    text = detail(ev)
    return text.replace("echo request", "echo req").replace(" is-at ", " at ") if level else text


def line(ev: ProbeEvent, t0: int, names: NetnsNames, width: int | None = None) -> Text:
    (tw, nw, iw, pw), level = _layout(width)
    rel = (ev.ts_ns - t0) / 1e9
    text = Text(f"{rel:{tw}.{6 if level == 0 else 3}f} ", style="dim")
    text.append(f"{names.name(ev.netns)[:nw]:<{nw}} ", style="cyan")
    text.append(f"{(ev.ifname or '-')[:iw]:<{iw}} ", style="bold")
    text.append(f"{_point(ev.point, pw):<{pw}} ", style=POINT_STYLE.get(ev.point, ""))
    text.append(_detail(ev, level))
    benign = benign_drop_reason(ev) if ev.drop_reason else None
    if benign:
        text.append(f"  freed ({ev.drop_reason}: {benign})", style="dim")
    elif ev.drop_reason:
        text.append(f"  DROP {ev.drop_reason}", style="bold red")
    if ev.location and ev.point in ("kfree_skb", "consume_skb"):
        text.append(f" @{ev.location}", style="dim")
    if ev.cloned:
        text.append(" (clone)", style="dim")
    if width is not None and len(text) > width:
        text.truncate(width - 1)
        text.append("…", style="dim")
    return text


def header(width: int | None = None) -> str:
    (tw, nw, iw, pw), _ = _layout(width)
    return f"{'TIME(s)':>{tw}} {'NETNS':<{nw}} {'IFACE':<{iw}} {'POINT':<{pw}} WHAT"


HEADER = header()


def json_line(ev: ProbeEvent, names: NetnsNames, clock: Clock | None = None) -> str:
    """One event as `trace --json` prints it: model.ProbeEvent's fields (skb and
    head as hex strings), `time` (RFC 3339 UTC beside the kernel's `ts_ns`,
    when the clock is known), `netns_name` and the packet's `summary`."""
    d: dict[str, Any] = to_dict(ev)
    for key in ID_FIELDS:
        d[key] = hex_id(d[key])
    if clock is not None:
        d["time"] = clock.rfc3339(ev.ts_ns)
    d["netns_name"] = names.name(ev.netns)
    if ev.packet is not None:
        d["summary"] = ev.packet.describe()
    return json.dumps(d, separators=(",", ":"))


def notice_line(kind: str, record: dict[str, Any]) -> str:
    """A notice in the --json stream: {"type": "lost" | "scope", ...}. Event
    lines have no "type" key, so a reader tells them apart by it."""
    return json.dumps({"type": kind, **record}, separators=(",", ":"))


def notice_text(notice: dict[str, Any]) -> str:
    """A recorded notice in words, for `report`'s notes."""
    when = notice.get("time") or "?"
    if notice.get("type") == "lost":
        return f"{when}: {notice.get('lost')} events lost (ring buffer full)"
    where = notice.get("netns", "?")
    if notice.get("interface"):
        where += f"/{notice['interface']}"
    return f"{when}: scope {notice.get('change')} {where}"


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
