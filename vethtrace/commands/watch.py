"""`vethtrace watch [FILTER] [-n NETNS ...]`: packet paths over the topology, live.

Four threads, one state (render/live_state.WatchState):
- events: drains the BPF collector into the state (counters, drops, window);
- discovery: re-discovers the topology every ~2 s and re-runs check, so
  namespaces and interfaces that appear or vanish show up while it runs;
- keys: reads `q` from the terminal in cbreak mode;
- main: rebuilds packet paths and redraws the screen a few times a second.
Drawing is a pure function of the state (render/live.render), so what the
screen shows can be tested without a terminal.

When stdout is not a terminal there is no screen to draw: watch streams the
same lines as `vethtrace trace` instead.

The terminal is always given back: rich's Live restores the screen and
cursor, and the termios attributes saved before cbreak are restored in a
finally (also on Ctrl-C and errors).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from vethtrace import netns as netns_mod
from vethtrace.console import make_console
from vethtrace.errors import ExitStatus, UserError, require_root
from vethtrace.model import Finding, Topology
from vethtrace.render.live import render
from vethtrace.render.live_state import Notice, WatchState

REFRESH_S = 0.2  # 5 frames/s: smooth enough for counters, cheap under floods
DISCOVER_EVERY_S = 2.0
# Set to a file path to have watch write its frame (start, duration) times there at
# exit, for bench/watch_bench.py.
FRAMES_ENV = "VETHTRACE_WATCH_FRAMES"


def run(
    filter: list[str] | None = None,
    netns: list[str] | None = None,
    duration: float | None = None,
    wait: bool = False,
    buffer: int | None = None,
    nftrace: bool = False,
) -> int:
    from vethtrace.commands.trace import ring_pages_of
    from vethtrace.commands.trace import run as trace_run

    filter_words = list(filter or [])
    names = list(netns or [])
    if not sys.stdout.isatty():
        return int(
            trace_run(
                filter=filter_words,
                netns=names,
                duration=duration,
                as_json=False,
                write=None,
                pcap=None,
                wait=wait,
                buffer=buffer,
                nftrace=nftrace,
            )
        )
    if duration is not None and not duration > 0:
        raise UserError("--duration must be positive")
    pages = ring_pages_of(buffer)
    require_root("watch")
    for name in names:
        if not netns_mod.exists(name):
            raise UserError(f"no network namespace named {name!r} (see `ip netns list`)")
    return Watch(" ".join(filter_words), names, duration, wait, pages, nftrace).run()


def _discover(names: list[str]) -> tuple[Topology, list[Finding]]:
    from vethtrace.diagnose.check import run_rules
    from vethtrace.topology import discover

    topo = discover(names or None)
    return topo, run_rules(topo, names or None)


class Watch:
    def __init__(
        self,
        filter_text: str,
        names: list[str],
        duration: float | None,
        wait: bool = False,
        ring_pages: int = 2048,
        nftrace: bool = False,
    ) -> None:
        from vethtrace.correlate import correlate

        self.names = names
        self.duration = duration
        self.wait = wait
        self.ring_pages = ring_pages
        self.nftrace = nftrace  # --nftrace: rule verdicts under the paths (collect/nftrace.py)
        self.scope_gone = False  # every watched namespace vanished (exit 1 unless --wait)
        self.state = WatchState(filter_text=filter_text, netns=names, correlate=correlate)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.frames: list[tuple[float, float, float]] = []  # (start, total, paths) s
        self.inodes: dict[str, int] = {}  # namespace name -> inode traced
        self.collector: Any = None  # the BpfCollector, once made (the scope grows)
        self.timing = bool(os.environ.get(FRAMES_ENV))  # keep frame times only for bench/

    # --- threads -----------------------------------------------------------------

    def _events(self, collector: Any, session: Any) -> None:
        """The only thread that touches the collector (and the nftables trace
        session) after start(): bcc's buffers are not meant to be polled and
        closed from two threads."""
        try:
            while not self.stop.is_set():
                self.state.add_events(collector.poll(100))
                self.state.set_lost(collector.lost)
                if session is not None:
                    self.state.add_nftrace(session.poll())
        except BaseException as exc:  # shown by the main thread
            self.error = exc
            self.stop.set()

    def _rediscover(self) -> None:
        """Every ~2 s; slower on hosts where discovery itself is slow (hundreds
        of namespaces), so watching never spends more than ~1/5 of a core on it."""
        pause = DISCOVER_EVERY_S
        while not self.stop.wait(pause):
            # Watched namespaces can be deleted under us: keep watching the rest.
            alive = [n for n in self.names if netns_mod.exists(n)]
            if self.names and not alive:
                with self.state.lock:
                    self.state.status = "every watched namespace is gone"
                    self.state.set_topology(Topology(), [])
                if not self.wait:
                    self.scope_gone = True
                    self.stop.set()
                continue
            try:
                t0 = time.monotonic()
                topo, findings = _discover(alive)
                pause = max(DISCOVER_EVERY_S, 4 * (time.monotonic() - t0))
            except UserError as exc:  # e.g. a watched namespace was deleted
                with self.state.lock:
                    self.state.status = f"discovery: {exc}"
                continue
            except Exception as exc:  # keep watching with the last topology
                with self.state.lock:
                    self.state.status = f"discovery failed: {exc}"
                continue
            self.state.set_topology(topo, findings)
            # A namespace deleted and re-created under the same name is a new
            # one (another inode): the probes' scope is map data, so it joins it.
            recreated = [
                ns
                for ns in topo.namespaces
                if self.names and self.inodes.get(ns.name, ns.inode) != ns.inode
            ]
            if recreated and self.collector is not None:
                self.collector.add_netns([ns.inode for ns in recreated])
                self.inodes.update({ns.name: ns.inode for ns in recreated})
            from vethtrace.collect.runcfg import vxlan_ports_of

            ports = vxlan_ports_of(topo)  # a VXLAN device that appeared: decode its port
            if self.collector is not None and set(ports) - set(self.collector.vxlan_ports or []):
                self.collector.set_vxlan_ports(ports)
            with self.state.lock:
                self.state.status = (
                    f"{', '.join(ns.name for ns in recreated)} re-created: traced again"
                    if recreated
                    else "tracing"
                )

    def _keys(self, fd: int) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            try:
                key = os.read(fd, 32)
            except OSError:
                return
            if not key or key.lower().startswith(b"q") or b"\x03" in key:
                self.stop.set()

    # --- main loop -----------------------------------------------------------------

    def run(self) -> int:
        from rich.live import Live

        from vethtrace.collect.bpf import BpfCollector
        from vethtrace.collect.runcfg import vxlan_ports_of

        console = _screen_console()
        topo, findings = _discover(self.names)
        self.state.set_topology(topo, findings)
        self.inodes = {ns.name: ns.inode for ns in topo.namespaces}
        inodes = [ns.inode for ns in topo.namespaces] if self.names else None
        # Built before the screen opens: a bad filter is a one-line error, not a flash.
        # BpfCollector.poll() reads at most POLL_BUDGET events: under a flood it
        # comes back, and what the ring cannot hold is counted as lost (shown).
        collector = self.collector = BpfCollector(
            self.state.filter_text, netns_inodes=inodes, ringbuf_pages=self.ring_pages,
            vxlan_ports=vxlan_ports_of(topo),
        )  # fmt: skip
        deadline = None if self.duration is None else time.monotonic() + self.duration
        session = self._nftrace_session(collector)
        events = threading.Thread(target=self._events, args=(collector, session), name="events")
        try:
            with (
                contextlib.ExitStack() as cleanup,
                collector,
                _cbreak() as fd,
                Live(
                    render(self.state),
                    console=console,
                    screen=True,
                    auto_refresh=False,
                    redirect_stdout=False,
                    redirect_stderr=False,
                ) as live,
            ):
                if fd is not None:
                    keys = threading.Thread(target=self._keys, args=(fd,), name="keys")
                    keys.daemon = True
                    keys.start()
                self.state.status = "compiling probes…"
                live.update(render(self.state), refresh=True)
                collector.start()
                self.state.plan = collector.plan_line
                if session is not None:
                    # our tables go when we leave, whatever the way out (the
                    # kernel removes them with our socket even after SIGKILL)
                    cleanup.callback(session.close)
                    self.state.status = "adding nftrace tables…"
                    live.update(render(self.state), refresh=True)
                    session.start()
                    self.state.plan += "; nftrace"
                    for note in session.notes:
                        self.state.notices.append(Notice(time.time(), f"nftrace: {note}"))
                self.state.status = "tracing"
                events.start()
                threading.Thread(target=self._rediscover, name="discover", daemon=True).start()
                try:
                    self._loop(live, deadline)
                finally:
                    self.stop.set()
                    while events.is_alive():  # before the collector closes under it
                        with contextlib.suppress(KeyboardInterrupt):
                            events.join()
        except KeyboardInterrupt:
            pass  # Ctrl-C is how people leave watch: not an error
        finally:
            self.stop.set()
        self._write_frames()
        if self.error is not None:
            if isinstance(self.error, UserError):
                raise self.error
            raise UserError(f"tracing stopped: {self.error}")
        console.print(
            f"vethtrace watch: {self.state.events_total:,} events, "
            f"{self.state.lost:,} lost, {sum(self.state.drops.values()):,} drops"
        )
        if self.scope_gone:
            console.print(
                "vethtrace watch: nothing left to watch (every namespace of -n is gone); "
                "--wait keeps watching"
            )
            return int(ExitStatus.FINDINGS)
        return int(ExitStatus.OK)

    def _nftrace_session(self, collector: Any) -> Any:
        """The kernel's nftables trace for the same filter and namespaces, or
        None without --nftrace; built (not started) before the screen opens."""
        if not self.nftrace:
            return None
        from vethtrace.collect.nftrace import NftraceSession, scopes_named

        return NftraceSession(collector.filter, scopes_named(self.names))

    def _loop(self, live: Any, deadline: float | None) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            self.state.tick()
            self.state.refresh_paths()
            t1 = time.perf_counter()
            with self.state.lock:
                live.update(render(self.state), refresh=True)
            if self.timing:
                self.frames.append((t0, time.perf_counter() - t0, t1 - t0))
            if deadline is not None and time.monotonic() >= deadline:
                break
            self.stop.wait(max(0.0, REFRESH_S - (time.perf_counter() - t0)))

    def _write_frames(self) -> None:
        path = os.environ.get(FRAMES_ENV)
        if path:
            with open(path, "w") as f:
                json.dump(
                    {
                        "frames": self.frames,
                        "events": self.state.events_total,
                        "lost": self.state.lost,
                    },
                    f,
                )


def _screen_console() -> Console:
    """make_console's terminal settings, minus COLUMNS/LINES from the environment:
    shells export those at start-up, and a full-screen view must follow the real
    (and resizable) terminal, not a size frozen when the shell started."""
    base = make_console()
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return Console(
        highlight=False,
        emoji=False,
        no_color=base.no_color,
        _environ=environ,
    )


@contextlib.contextmanager
def _cbreak() -> Iterator[int | None]:
    """Keys without Enter and without echo; the old attributes always come back."""
    fd = sys.stdin.fileno() if sys.stdin and sys.stdin.isatty() else None
    if fd is None:
        yield None
        return
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
