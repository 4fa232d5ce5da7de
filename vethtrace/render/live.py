"""The `watch` screen as a pure function of a WatchState.

One screen answers "where are my packets going right now": the topology with
live per-interface counters (so a port that receives but never transmits
stands out), the most recent packet paths as hop chains coloured by outcome (a
diverted ARP reply reads `song/veth1 → host/veth0 → br0  diverted`), and what
is wrong (findings, drops by kernel reason, lost events). No I/O here: the
command feeds the state and hands the result to rich's Live; tests print it on
a recording console of fixed size.

Call with `state.lock` held (the feeding threads mutate deques and dicts).
"""

from __future__ import annotations

import time

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.layout import Layout
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from vethtrace.model import Interface, Namespace, Topology
from vethtrace.render.live_state import WatchState
from vethtrace.render.packet_rows import (
    OUTCOME_MARK,
    OUTCOME_STYLE,
    NameShortener,
    hop_chain,
    outcome_text,
    short_packet,
)

MAX_FINDINGS = 4
SPARKS = "▁▂▃▄▅▆▇█"


def render(state: WatchState, now_wall: float | None = None) -> RenderableType:
    """The whole screen; fills whatever size the console has."""
    return _Screen(state, time.time() if now_wall is None else now_wall)


class _Screen:
    """Defers building the layout until rich says how wide the screen is."""

    def __init__(self, state: WatchState, now_wall: float) -> None:
        self.state = state
        self.now_wall = now_wall

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = options.height or console.height
        yield _layout(self.state, self.now_wall, options.max_width, height)


def _layout(state: WatchState, now_wall: float, width: int, height: int) -> Layout:
    """header / topology / findings | drops / packet paths / footer. The paths
    panel gets what is left: it is the part that changes the most."""
    short = NameShortener(state.topology)
    topo_height = min(_topology_rows(state.topology) + 3, max(6, int(height * 0.4)))
    drops = _drops(state, short, now_wall)
    findings_rows = min(len(state.findings), MAX_FINDINGS) + (len(state.findings) > MAX_FINDINGS)
    status_height = max(findings_rows, len(drops.renderables)) + 2
    status = Layout(name="status", size=status_height)
    status.split_row(
        Layout(_findings(state, short), name="findings", ratio=1),
        Layout(Panel(drops, title="drops by reason", title_align="left", border_style="blue"),
               name="drops", size=40 if width >= 110 else 34),
    )
    layout = Layout(name="screen")
    layout.split_column(
        Layout(_header(state, short, now_wall), name="header", size=1),
        Layout(_topology(state, short, topo_height - 3), name="topology", size=topo_height),
        status,
        Layout(_paths(state, short, width), name="paths", ratio=1),
        Layout(_footer(state), name="footer", size=1),
    )
    return layout


# --- header and footer -------------------------------------------------------------


def _header(state: WatchState, short: NameShortener, now_wall: float) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    # Most important first: what is narrower than the screen is cut at the right.
    t.append(" vethtrace watch ", style="bold reverse")
    t.append(f" {state.status} ", style="cyan")
    if state.losing():  # first, in red: the screen is missing events right now
        t.append(f" LOSING EVENTS  lost {state.lost:,} ", style="bold white on red")
    else:
        t.append(" lost ")
        t.append(f"{state.lost:,}", style="bold red" if state.lost else "green")
    t.append(f"  events {state.events_total:,}")
    t.append(f" ({state.rate():,.0f}/s)", style="dim")
    t.append("  ")
    t.append(state.filter_text or "all packets", style="bold")
    nns = len(state.topology.namespaces) if state.topology else 0
    t.append(f"  {nns} netns")
    if short.prefix:
        t.append(f" ({short.prefix}*)", style="dim")
    t.append("  " + time.strftime("%H:%M:%S", time.localtime(now_wall)), style="dim")
    return t


def _footer(state: WatchState) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(" q", style="bold")
    t.append(" quit   ")
    t.append("colours:", style="dim")
    for kind in ("delivered", "diverted", "dropped", "in-flight"):
        t.append(f" {OUTCOME_MARK[kind]} {kind}", style=OUTCOME_STYLE[kind])
    if state.plan:
        t.append(f"   probes: {state.plan}", style="dim")
    return t


# --- topology --------------------------------------------------------------------


def _ordered(ns: Namespace) -> list[tuple[int, Interface, str]]:
    """Rows for one namespace: bridges with their ports under them, then the
    rest; loopback left out (it carries nothing across namespaces)."""
    rows: list[tuple[int, Interface, str]] = []
    shown: set[int] = set()
    for br in (i for i in ns.interfaces if i.kind == "bridge"):
        rows.append((1, br, ""))
        shown.add(br.key.ifindex)
        ports = [i for i in ns.interfaces if i.master == br.key.ifindex]
        for n, port in enumerate(ports):
            rows.append((2, port, "└ " if n == len(ports) - 1 else "├ "))
            shown.add(port.key.ifindex)
    for iface in ns.interfaces:
        if iface.key.ifindex in shown or iface.kind == "loopback" or iface.name == "lo":
            continue
        rows.append((1, iface, ""))
    return rows


def _topology_rows(topo: Topology | None) -> int:
    if topo is None:
        return 1
    return sum(1 + len(_ordered(ns)) for ns in topo.namespaces)


def _num(n: int) -> str:
    """Counts in at most 6 columns: 9,999 / 123k / 12.3M."""
    if n < 10_000:
        return f"{n:,}"
    if n < 1_000_000:
        return f"{n // 1000}k"
    return f"{n / 1e6:.1f}M" if n < 100_000_000 else f"{n // 1_000_000}M"


SPARK_WIDTH = 10  # seconds shown per sparkline


def _spark(history: list[int], top: int) -> Text:
    """One column per second, scaled to `top`, the busiest second of any
    interface in the visible window: each row's own maximum would draw any
    steady rate as a row of full blocks, and every row alike."""
    t = Text(no_wrap=True)
    for n in history:
        if n == 0 or top <= 0:
            t.append("▁", style="bright_black")
        else:
            level = 1 + (min(n, top) * (len(SPARKS) - 2)) // top
            t.append(SPARKS[min(len(SPARKS) - 1, level)], style="cyan")
    return t


def _window_top(state: WatchState, second: int) -> int:
    """The busiest second of any interface over the sparklines' window."""
    return max(
        (max(c.history(second)[-SPARK_WIDTH:], default=0) for c in state.counters.values()),
        default=0,
    )


def _busiest_first(state: WatchState, topo: Topology) -> list[Namespace]:
    """Namespaces with traffic first (most frames first), then the rest in
    discovery order: on a host with hundreds of namespaces the panel can only
    show a few, and those should be the ones the packets go through."""

    def frames(ns: Namespace) -> int:
        total = 0
        for iface in ns.interfaces:
            c = state.counters.get(iface.key)
            if c is not None:
                total += c.rx + c.tx + c.dropped
        return total

    activity = {ns.inode: frames(ns) for ns in topo.namespaces}
    if not any(activity.values()):
        return list(topo.namespaces)
    return sorted(topo.namespaces, key=lambda ns: -activity[ns.inode])


def _topology(state: WatchState, short: NameShortener, rows: int) -> Panel:
    table = Table(box=None, padding=(0, 1, 0, 0), expand=True, header_style="dim")
    table.add_column("interface", no_wrap=True, overflow="ellipsis", min_width=10)
    table.add_column("address", no_wrap=True, overflow="ellipsis", min_width=7)
    table.add_column("link", no_wrap=True, overflow="ellipsis", ratio=1, min_width=8)
    table.add_column("rx", justify="right", no_wrap=True, width=6)
    table.add_column("tx", justify="right", no_wrap=True, width=6)
    table.add_column("drop", justify="right", no_wrap=True, width=6)
    second = state.now_ns // 1_000_000_000
    top = _window_top(state, second)
    # the scale is in the header: the top block is this many frames in a second
    table.add_column(f"/s ≤{_num(top)}" if top else "frames/s", no_wrap=True, width=SPARK_WIDTH)
    topo = state.topology
    if topo is None:
        table.add_row(Text("discovering…", style="dim"))
        return Panel(table, title="topology", title_align="left", border_style="blue")
    namespaces = _busiest_first(state, topo)
    used = 0
    subtitle = None
    for n, ns in enumerate(namespaces):
        ordered = _ordered(ns)
        if used + 1 + len(ordered) > rows:
            left = len(namespaces) - n
            hidden = sum(len(x.interfaces) for x in namespaces[n:])
            subtitle = Text(
                f"{left} more namespace{'s' if left > 1 else ''} ({hidden} interfaces) "
                "not shown: pick with -n NETNS",
                style="dim",
            )
            break
        used += 1 + len(ordered)
        table.add_row(Text(short.ns(ns.name), style="bold magenta"))
        for depth, iface, branch in ordered:
            c = state.counters.get(iface.key)
            name = Text("  " * (depth - 1) + "  " + branch)
            up = iface.admin_up and iface.carrier
            name.append(iface.name, style="bold" if up else "bold red")
            if not up:
                name.append(" down" if not iface.admin_up else " no-carrier", style="red")
            addr = ", ".join(a.cidr for a in iface.addresses if a.family == 4)
            table.add_row(
                name,
                Text(addr, style="yellow" if addr and depth == 2 else ""),
                _link(iface, ns, topo, short),
                _num(c.rx) if c else "",
                _num(c.tx) if c else "",
                Text(_num(c.dropped), style="bold red") if c and c.dropped else "",
                _spark(c.history(second)[-SPARK_WIDTH:], top) if c else "",
            )
    return Panel(
        table,
        title="topology",
        title_align="left",
        subtitle=subtitle,
        subtitle_align="right",
        border_style="blue",
    )


def _link(iface: Interface, ns: Namespace, topo: Topology, short: NameShortener) -> Text:
    if iface.kind == "veth":
        if iface.peer is not None:
            peer = topo.label(iface.peer)
            same = iface.peer.netns == ns.inode
            return Text("⇄ " + (peer.split("/", 1)[1] if same else short.label(peer)))
        return Text(f"⇄ peer {iface.peer_state or 'unknown'}", style="red")
    if iface.kind == "bridge":
        ports = sum(1 for i in ns.interfaces if i.master == iface.key.ifindex)
        return Text(f"bridge, {ports} port{'s' if ports != 1 else ''}", style="dim")
    return Text(iface.kind, style="dim")


# --- findings, drops, notices ------------------------------------------------------


def _findings(state: WatchState, short: NameShortener) -> Panel:
    lines = []
    for f in state.findings[:MAX_FINDINGS]:
        t = Text(no_wrap=True, overflow="ellipsis")
        style = {"error": "bold red", "warning": "yellow"}.get(f.severity, "cyan")
        t.append({"error": "✗ ", "warning": "! "}.get(f.severity, "i "), style=style)
        where = short.ns(f.netns) + (f"/{f.interface}" if f.interface else "")
        t.append(f.rule, style=style)
        t.append(f"  {where}  ", style="bold")
        t.append(short.label(f.summary))
        lines.append(t)
    more = len(state.findings) - MAX_FINDINGS
    if more > 0:
        lines.append(Text(f"… {more} more: run `vethtrace check`", style="dim"))
    if not lines:
        lines.append(Text("no findings", style="green"))
    style = "red" if any(f.severity == "error" for f in state.findings) else "blue"
    title = f"findings ({len(state.findings)})"
    return Panel(Group(*lines), title=title, title_align="left", border_style=style)


def _drops(state: WatchState, short: NameShortener, now_wall: float) -> Group:
    lines: list[Text] = []
    if not state.drops:
        lines.append(Text("no drops", style="green"))
    for reason, n in state.drops.most_common(5):
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"{_num(n):>5} ", style="bold red")
        t.append(reason)
        where = state.drop_where.get(reason)
        if where:
            label, _ = where.most_common(1)[0]
            t.append(f" {short.label(label)}", style="dim")
        lines.append(t)
    lost = Text("lost events ", style="dim")
    lost.append(f"{state.lost:,}", style="bold red" if state.lost else "green")
    lines.append(lost)
    for notice in list(state.current_notices(now_wall))[-3:]:
        style = "green" if notice.text.startswith("+") else "yellow"
        lines.append(Text(short.label(notice.text), style=style, no_wrap=True, overflow="ellipsis"))
    return Group(*lines)


# --- packet paths ----------------------------------------------------------------


def _paths(state: WatchState, short: NameShortener, width: int) -> Panel:
    table = Table(box=None, padding=(0, 1, 0, 0), expand=True, header_style="dim")
    table.add_column("time", no_wrap=True, width=12)
    # The path is what this panel is for: the packet column gets what is left
    # after ~32 columns of path, between 16 and 42.
    packet_width = max(16, min(42, width - 4 - 12 - 22 - 3 - 32))
    table.add_column("packet", no_wrap=True, overflow="ellipsis", width=packet_width)
    table.add_column("path", no_wrap=True, overflow="ellipsis", ratio=1, min_width=30)
    table.add_column("outcome", no_wrap=True, overflow="ellipsis", min_width=12, max_width=28)
    paths = state.paths
    if not paths:
        table.add_row("", Text("waiting for packets…", style="dim"))
    for path in reversed(paths[-60:]):  # newest first; the panel clips the rest
        # a path with no hops still has the time of its first event (never 0,
        # which would convert to the boot moment)
        ts = path.hops[0].ts_ns if path.hops else path.first_ns
        packet = short_packet(path)
        style = OUTCOME_STYLE.get(path.outcome, "")
        table.add_row(
            Text(state.clock.clock_text(ts), style="dim"),
            Text(packet, style="" if path.outcome == "delivered" else style),
            hop_chain(path, short),
            outcome_text(path),
        )
    title = f"packet paths (newest first, {len(paths)} recent)"
    return Panel(table, title=title, title_align="left", border_style="blue")
