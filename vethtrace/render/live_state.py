"""What the live view knows, kept apart from how it is drawn.

`watch` feeds this object from three threads (kernel events, periodic
re-discovery, the clock) and draws it several times a second with
`render.live.render(state)`, a pure function of it. Keeping the two apart is
what lets the screen be tested at a fixed size from a recording, with no
terminal and no kernel.

Everything is bounded so memory stays flat under a flood: a window of the
most recent events (what packet paths are rebuilt from), per-interface
counters with a short per-second history, and the most recent paths.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vethtrace.clock import Clock
from vethtrace.diagnose.verdict.diverted import mark_diversion
from vethtrace.model import Finding, IfaceKey, PacketPath, ProbeEvent, Topology
from vethtrace.points import COUNTED_RX_POINTS, COUNTED_TX_POINTS, DROP_POINT, is_benign_drop

if TYPE_CHECKING:
    from vethtrace.record import Recording

ADD_CHUNK = 2000  # events added per lock hold
SPARK_SECONDS = 16  # per-second history kept for the rate sparkline
NOTICE_SECONDS = 30.0  # how long "veth3 appeared" stays on screen
LOSING_SECONDS = 3.0  # the header's "losing events" stays this long after a loss

Correlate = Callable[[list[ProbeEvent], Topology | None], list[PacketPath]]


@dataclass
class IfaceCounters:
    rx: int = 0
    tx: int = 0
    dropped: int = 0
    per_second: dict[int, int] = field(default_factory=dict)  # second -> frames

    def count(self, second: int) -> None:
        self.per_second[second] = self.per_second.get(second, 0) + 1
        if len(self.per_second) > SPARK_SECONDS + 4:
            for old in sorted(self.per_second)[: -SPARK_SECONDS - 1]:
                del self.per_second[old]

    def history(self, now_second: int) -> list[int]:
        """Frames per second for the last SPARK_SECONDS seconds, oldest first."""
        start = now_second - SPARK_SECONDS + 1
        return [self.per_second.get(s, 0) for s in range(start, now_second + 1)]


@dataclass
class Notice:
    wall: float
    text: str


class WatchState:
    """The live view's model. Mutators take the lock; `render` must be called
    with `state.lock` held (as Watch._loop in commands/watch does)."""

    def __init__(
        self,
        filter_text: str = "",
        netns: Iterable[str] = (),
        correlate: Correlate | None = None,
        window: int = 3000,
        max_paths: int = 100,
    ) -> None:
        self.lock = threading.RLock()
        self.filter_text = filter_text
        self.netns = list(netns)
        self.correlate = correlate
        self.topology: Topology | None = None
        self.findings: list[Finding] = []
        self.counters: dict[IfaceKey, IfaceCounters] = {}
        self.drops: Counter[str] = Counter()
        self.drop_where: dict[str, Counter[str]] = {}  # reason -> "netns/if" -> n
        self.events_total = 0
        self.lost = 0
        self.lost_at: float | None = None  # monotonic time the loss count last grew
        self.window: deque[ProbeEvent] = deque(maxlen=window)
        self.paths: list[PacketPath] = []
        self.max_paths = max_paths
        self.notices: deque[Notice] = deque(maxlen=20)
        # With -n, the inodes of the watched namespaces still alive; None = all.
        self.allowed: set[int] | None = None
        self.foreign = 0  # events dropped because their namespace is not watched
        self.plan = ""
        self.status = "starting"  # shown in the header: starting / tracing / ended
        # Kernel times are CLOCK_MONOTONIC; this maps them to wall time for display.
        self.clock = Clock()
        self.now_ns = time.monotonic_ns()
        self._dirty = False
        self._rate_events: deque[tuple[int, int]] = deque(maxlen=SPARK_SECONDS + 2)

    # --- feeding -----------------------------------------------------------------

    def add_events(self, events: list[ProbeEvent]) -> None:
        """A batch from the collector. Under a flood one poll can return
        hundreds of thousands of events: the lock is taken per chunk, so the
        screen (which needs the lock to draw) is never held up for long."""
        for start in range(0, len(events), ADD_CHUNK):
            with self.lock:
                for ev in events[start : start + ADD_CHUNK]:
                    self.add_event(ev)

    def add_event(self, ev: ProbeEvent) -> None:
        with self.lock:
            if self.allowed is not None and ev.netns not in self.allowed:
                # A watched namespace was deleted and the kernel gave its inode
                # to a new one (inodes recycle within seconds): not ours.
                self.foreign += 1
                return
            self.events_total += 1
            self.window.append(ev)
            self._dirty = True
            if ev.ts_ns > self.now_ns:
                self.now_ns = ev.ts_ns
            if ev.source != "bpf":
                return
            second = ev.ts_ns // 1_000_000_000
            if ev.point == DROP_POINT:
                if is_benign_drop(ev):
                    return
                reason = ev.drop_reason or "UNKNOWN"
                self.drops[reason] += 1
                where = self.drop_where.setdefault(reason, Counter())
                where[self.iface_label(ev.key, ev.ifname)] += 1
                if ev.ifindex:
                    self._counters(ev.key).dropped += 1
                return
            if ev.point in COUNTED_TX_POINTS:
                c = self._counters(ev.key)
                c.tx += 1
                c.count(second)
            elif ev.point in COUNTED_RX_POINTS:
                c = self._counters(ev.key)
                c.rx += 1
                c.count(second)

    def _counters(self, key: IfaceKey) -> IfaceCounters:
        c = self.counters.get(key)
        if c is None:
            c = self.counters[key] = IfaceCounters()
        return c

    def set_topology(
        self, topo: Topology, findings: list[Finding] | None = None, wall: float | None = None
    ) -> list[str]:
        """Install a fresh discovery; returns (and shows) what appeared/vanished."""
        with self.lock:
            changes = diff_topology(self.topology, topo) if self.topology else []
            now = time.time() if wall is None else wall
            for text in changes:
                self.notices.append(Notice(now, text))
            self.topology = topo
            if self.netns:
                self.allowed = {ns.inode for ns in topo.namespaces if ns.name in self.netns}
            if findings is not None:
                self.findings = findings
            gone = {i.key for ns in topo.namespaces for i in ns.interfaces}
            for key in [k for k in self.counters if k not in gone]:
                del self.counters[key]  # vanished interfaces; their ifindex may be reused
            return changes

    def set_lost(self, lost: int, now: float | None = None) -> None:
        with self.lock:
            if lost > self.lost:
                self.lost_at = time.monotonic() if now is None else now
            self.lost = lost

    def losing(self, now: float | None = None) -> bool:
        """Were events lost in the last LOSING_SECONDS? (the header says so in red)"""
        now = time.monotonic() if now is None else now
        return self.lost_at is not None and now - self.lost_at <= LOSING_SECONDS

    def refresh_paths(self) -> None:
        """Rebuild packet paths from the event window when new events came in.
        The window re-correlates as a whole: paths are only known once their
        later events (the drop, the peer's receive) have arrived."""
        with self.lock:
            if not self._dirty or self.correlate is None:
                return
            self._dirty = False
            paths = self.correlate(list(self.window), self.topology)[-self.max_paths :]
            for path in paths:
                mark_diversion(path, self.topology)
            self.paths = paths

    def tick(self, now_ns: int | None = None) -> None:
        with self.lock:
            self.now_ns = max(self.now_ns, now_ns if now_ns is not None else time.monotonic_ns())

    # --- reading (for render) ------------------------------------------------------

    def iface_label(self, key: IfaceKey, fallback: str = "") -> str:
        if key.netns == 0 and key.ifindex == 0:
            return fallback or "?"  # e.g. a socket's skb freed with no device
        if self.topology is not None:
            ns = self.topology.netns(key.netns)
            iface = ns.iface(key.ifindex) if ns else None
            if ns and iface:
                return f"{ns.name}/{iface.name}"
            if ns:
                return f"{ns.name}/{fallback or f'if{key.ifindex}'}"
        return fallback or str(key)

    def wall(self, ts_ns: int) -> float:
        """Wall time of a kernel stamp (now for a missing one): for the header's clock."""
        wall = self.clock.wall(ts_ns)
        return time.time() if wall is None else wall

    def rate(self) -> float:
        """Events per second over the last few seconds (for the header)."""
        with self.lock:
            second = self.now_ns // 1_000_000_000
            if not self._rate_events or self._rate_events[-1][0] != second:
                self._rate_events.append((second, self.events_total))
            first_s, first_n = self._rate_events[0]
            span = second - first_s
            return (self.events_total - first_n) / span if span > 0 else 0.0

    def current_notices(self, now: float | None = None) -> list[Notice]:
        now = time.time() if now is None else now
        return [n for n in self.notices if now - n.wall <= NOTICE_SECONDS]


def diff_topology(old: Topology, new: Topology) -> list[str]:
    """Human lines for namespaces and interfaces that appeared or vanished."""
    out: list[str] = []
    old_ns = {ns.inode: ns for ns in old.namespaces}
    new_ns = {ns.inode: ns for ns in new.namespaces}
    for inode, ns in new_ns.items():
        if inode not in old_ns:
            out.append(f"+ netns {ns.name} appeared")
    for inode, ns in old_ns.items():
        if inode not in new_ns:
            out.append(f"- netns {ns.name} vanished")
    for inode, ns in new_ns.items():
        before = old_ns.get(inode)
        if before is None:
            continue
        had = {i.key: i for i in before.interfaces}
        has = {i.key: i for i in ns.interfaces}
        for key, iface in has.items():
            if key not in had:
                out.append(f"+ {ns.name}/{iface.name} appeared")
        for key, iface in had.items():
            if key not in has:
                out.append(f"- {ns.name}/{iface.name} vanished")
    return out


def replay(
    recording: Recording, correlate: Correlate | None, findings: list[Finding] | None = None
) -> WatchState:
    """A WatchState as `watch` would have had it at the end of a recorded run:
    the screen of an incident, reproducible (tests draw it at a fixed size)."""
    state = WatchState(correlate=correlate)
    state.clock = Clock.from_header(recording.header.get("clock")) or state.clock
    if recording.topology is not None:
        chosen = findings if findings is not None else recording.findings
        state.set_topology(recording.topology, chosen)
    for ev in recording.events:
        state.add_event(ev)
    state.set_lost(recording.lost)
    state.now_ns = max((e.ts_ns for e in recording.events), default=state.now_ns)
    state.status = "recorded"
    state.refresh_paths()
    return state
