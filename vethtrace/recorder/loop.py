"""The flight recorder's loop: drops from BPF, changes from rtnetlink, into the store.

One thread does the work (the monitor's thread only hands over notices),
so the store and the per-namespace state need no locks:

- every poll: kfree_skb events (collect/bpf.py with the "drop" area,
  consume_skb left out: it fires for every packet delivered, which is what
  keeps a flow that drops nothing at full speed) go to the DropCounter;
- notices: a namespace added or "dirty" is re-read (topology.discover of
  that namespace alone, ~5 ms) once no notice came for DEBOUNCE_S, or at
  the latest MAX_DEFER_S after the first one (a namespace that never stops
  changing, a flapping link, is still recorded twice a second instead of
  never), and the re-read is diffed with the last one (recorder/diff.py); the "change" record
  carries the changes in words *and* the namespace as read, so `report --at`
  can rebuild the topology of any moment; removed namespaces get a
  "change" record with action "removed"; neighbours going INCOMPLETE or
  FAILED (and permanent entries, and addresses moving to another MAC) get
  a "neigh" record;
- once a second: the finished seconds' drop counts are written, kernel
  events lost since the last second are noted, and the store rotates,
  prunes and guards the disk (recorder/store.py).

Stops on SIGTERM/SIGINT (or `duration`): the last counts and an end record
are written, so a stopped recorder leaves a complete recording.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vethtrace.collect.monitor import NetlinkMonitor, Notice
from vethtrace.errors import UserError
from vethtrace.model import Namespace, Topology, to_dict
from vethtrace.recorder.diff import diff_namespace
from vethtrace.recorder.drops import DropCounter
from vethtrace.recorder.store import SegmentStore
from vethtrace.recorder.when import clock

DEBOUNCE_S = 0.05
MAX_DEFER_S = 0.5
TICK_S = 1.0
GONE_S = 5.0
NEIGH_STATES = frozenset({"INCOMPLETE", "FAILED", "PERMANENT"})


@dataclass
class Options:
    directory: str
    max_size: int
    max_age: float | None
    min_free: int
    segment_size: int | None = None
    drops: bool = True
    duration: float | None = None
    command: list[str] | None = None


class FlightRecorder:
    """FlightRecorder(options).run() until stopped; stop() from another thread
    or a signal. `status` receives one-line messages for stderr."""

    def __init__(self, options: Options, status: Callable[[str], None]) -> None:
        self.o = options
        self.status = status
        self._stop = threading.Event()
        self._notices: queue.SimpleQueue[Notice] = queue.SimpleQueue()
        self.state: dict[int, Namespace] = {}
        self.names: dict[int, str] = {}
        # inode -> (wall time of the first notice, monotonic times of the first
        # and of the last one)
        self._dirty: dict[int, tuple[float, float, float]] = {}
        self._neigh: dict[tuple[int, int, str], tuple[str, str | None]] = {}
        self.drops = DropCounter(lambda i: self.names.get(i, f"netns:{i}" if i else "?"))
        self._lost_seen = 0
        self._snapshot_t = 0.0
        self._gone: dict[int, float] = {}  # vanished namespaces, forgotten after GONE_S
        self.store: SegmentStore | None = None

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self) -> int:
        collector = None
        if self.o.drops:
            from vethtrace.collect.bpf import BpfCollector
            from vethtrace.collect.prepare import VARIANTS

            # drops only, without consume_skb (fires for every packet delivered)
            collector = BpfCollector(**VARIANTS["record"])
        monitor = NetlinkMonitor(self._notices.put)
        old = {s: signal.signal(s, self.stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            plan = collector.start().describe() if collector is not None else None
            monitor.start()
            self.store = SegmentStore(
                self.o.directory,
                max_size=self.o.max_size,
                max_age=self.o.max_age,
                min_free=self.o.min_free,
                segment_size=self.o.segment_size,
                snapshot=self._snapshot,
                command=self.o.command,
                plan=plan,
                header={"recorder": {"drops": self.o.drops, "max_size": self.o.max_size,
                                     "max_age": self.o.max_age}},
                warn=self.status,
            )  # fmt: skip
            self.store.start()
            self.status(
                f"recording to {self.o.directory} ({len(self.state)} namespaces followed"
                f"{', kernel drops' if collector else ''}); SIGTERM or Ctrl-C stops"
            )
            self._loop(collector, monitor)
        finally:
            monitor.stop()
            # what the per-second notes have not said yet (end + notes = the total)
            lost = collector.lost - self._lost_seen if collector is not None else 0
            if collector is not None:
                for ev in collector.drain():
                    self.drops.add(ev)
                collector.close()
            if self.store is not None:
                self._drain_notices()
                self._write_drops(everything=True)
                self.store.close(lost=lost)
            for s, h in old.items():
                signal.signal(s, h)
        return 0

    def _loop(self, collector: Any, monitor: NetlinkMonitor) -> None:
        assert self.store is not None
        end = time.monotonic() + self.o.duration if self.o.duration else None
        next_tick = time.monotonic() + TICK_S
        while not self._stop.is_set():
            if collector is not None:
                for ev in collector.poll(100):
                    self.drops.add(ev)
            else:
                self._stop.wait(0.1)
            self._drain_notices()
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                self._write_drops()
                self._forget(now)
                if collector is not None and collector.lost > self._lost_seen:
                    n, self._lost_seen = collector.lost - self._lost_seen, collector.lost
                    self.store.write("note", {"t": time.time(), "lost": n,
                                              "text": f"{n} kernel event(s) lost"})  # fmt: skip
                if monitor.overruns:
                    text = f"{monitor.overruns} netlink overrun(s): intermediate changes missed"
                    self.store.write("note", {"t": time.time(), "text": text})
                    monitor.overruns = 0
                self.store.tick()
            if end is not None and now >= end:
                break

    # --- topology ------------------------------------------------------------

    def _snapshot(self) -> Topology:
        """The full topology a segment opens with; it also becomes the state
        later re-reads are diffed against."""
        from vethtrace.topology import discover

        self._snapshot_t = time.time()
        try:
            topo = discover()
        except Exception as exc:  # an always-on recorder outlives one failed read
            self.status(f"topology snapshot failed ({exc}); keeping the last known one")
            topo = Topology(namespaces=list(self.state.values()), taken_at=time.time(),
                            notes=[f"snapshot failed: {exc}; namespaces as last read"])  # fmt: skip
        self.state = {ns.inode: ns for ns in topo.namespaces}
        self.names.update({ns.inode: ns.name for ns in topo.namespaces})
        return topo

    def _drain_notices(self) -> None:
        while True:
            try:
                n = self._notices.get_nowait()
            except queue.Empty:
                break
            self.names.setdefault(n.inode, n.name)
            if n.kind == "added" and n.inode in self.state and n.t <= self._snapshot_t:
                continue  # already in the snapshot
            if n.kind in ("added", "dirty"):
                mono = time.monotonic()
                first, first_mono, _ = self._dirty.get(n.inode, (n.t, mono, mono))
                self._dirty[n.inode] = (first, first_mono, mono)
            elif n.kind == "removed":
                self._removed(n)
            elif n.kind == "neigh":
                self._neighbour(n)
        now = time.monotonic()
        due = [
            i
            for i, (_, first_mono, last) in self._dirty.items()
            if now - last >= DEBOUNCE_S or now - first_mono >= MAX_DEFER_S
        ]
        for inode in due:
            first, _, _ = self._dirty.pop(inode)
            self._reread(inode, first)

    def _reread(self, inode: int, t: float) -> None:
        """Re-read a namespace after notices; the change is dated by the first
        notice (when it happened), not by the re-read."""
        from vethtrace.topology import discover

        try:
            topo = discover([str(inode)])
        except (UserError, OSError):
            return  # gone meanwhile: its "removed" notice follows
        except Exception as exc:  # never let one namespace stop the recorder
            self._write("note", {"t": t, "text": f"re-reading netns {inode} failed: {exc}"})
            return
        ns = topo.netns(inode)
        if ns is None:
            return
        old = self.state.get(inode)
        changes = diff_namespace(old, ns)
        self.state[inode] = ns
        self.names[inode] = ns.name
        if not changes:
            return
        self._write("change", {
            "t": t, "netns": inode, "name": ns.name,
            "action": "added" if old is None else "changed",
            "changes": [to_dict(c) for c in changes], "namespace": to_dict(ns),
        })  # fmt: skip

    def _removed(self, n: Notice) -> None:
        known = self.state.pop(n.inode, None) is not None
        pending = self._dirty.pop(n.inode, None)
        self._gone[n.inode] = time.monotonic()
        for key in [k for k in self._neigh if k[0] == n.inode]:
            del self._neigh[key]
        text = "namespace vanished"
        if not known:  # it came and went between two re-reads: say it was there
            seen = clock(pending[0]) if pending else "?"
            text = f"namespace vanished (appeared at {seen}, gone before it could be read)"
        self._write("change", {
            "t": n.t, "netns": n.inode, "name": n.name, "action": "removed",
            "changes": [{"kind": "netns", "text": text, "iface": None}],
            "namespace": None,
        })  # fmt: skip

    def _neighbour(self, n: Notice) -> None:
        nb = n.neigh
        assert nb is not None
        key = (n.inode, nb.ifindex, nb.address)
        before = self._neigh.get(key)
        state = "DELETED" if n.deleted else nb.state
        self._neigh[key] = (state, nb.lladdr)
        if n.deleted:
            self._neigh.pop(key, None)
        moved = before is not None and nb.lladdr and before[1] and before[1] != nb.lladdr
        interesting = (
            state in NEIGH_STATES or moved or (before is not None and before[0] == "PERMANENT")
        )
        if not interesting or (before is not None and before[0] == state and not moved):
            return
        ns = self.state.get(n.inode)
        iface = ns.iface(nb.ifindex) if ns is not None else None
        self._write("neigh", {
            "t": n.t, "netns": n.inode, "name": n.name,
            "ifname": iface.name if iface else f"if{nb.ifindex}",
            "address": nb.address, "state": state, "lladdr": nb.lladdr,
            "old_state": before[0] if before else None,
        })  # fmt: skip

    def _forget(self, now: float) -> None:
        """Names of vanished namespaces are kept a little (their last drops are
        still being counted), then dropped, so churn does not grow memory."""
        for inode in [i for i, t in self._gone.items() if now - t > GONE_S]:
            del self._gone[inode]
            if inode not in self.state:
                self.names.pop(inode, None)

    def _write_drops(self, everything: bool = False) -> None:
        for rec in self.drops.flush(everything):
            self._write("drops", rec)

    def _write(self, kind: str, data: dict[str, Any]) -> None:
        """Changes, neighbours and notes are rare and each one matters: flushed
        at once, so even SIGKILL keeps them. Drop counts go out with the tick.

        A change is dated by its first notice, but never before the segment it
        goes into began: a notice that came while the segment's snapshot was
        being taken (or a re-read deferred across a rotation) would otherwise
        be older than the snapshot, and `topology_at` (which replays only the
        changes after a segment's start onto its snapshot) would drop it, so
        the newest state of that namespace would be lost from the recording."""
        if self.store is not None:
            if kind == "change" and self.store.started:
                data["t"] = max(data["t"], self.store.started)
            self.store.write(kind, data, flush=kind != "drops")
