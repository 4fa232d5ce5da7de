"""`vethtrace trace [FILTER] [-n NETNS ...] [--duration S] [--json] [--write FILE]
[--pcap FILE] [--wait] [--buffer KIB]`.

Streams kernel packet events (see collect/bpf.py for what each carries).
Status (spinner, the "tracing…" line with the plan, the summary) goes to
stderr when --json is given, so stdout stays one JSON object per line.

What must never be silent while it runs (issue #20): events the kernel could
not deliver (a `lost` notice as it happens, rate-limited on stderr, a record
in --json and in the recording), and the scope vanishing under it (a `scope`
notice; with nothing left to trace it ends, exit 1, unless --wait). The
deadline holds under a flood: events are shown in slices between clock
checks, and at the deadline the ring is read with a small budget, not
emptied; what was read and not shown by then is counted in the summary.
"""

from __future__ import annotations

import json
import mmap
import signal
import sys
import threading
import time
from typing import Any

from vethtrace import netns as netnsmod
from vethtrace.clock import Clock
from vethtrace.collect.bpf import BpfCollector
from vethtrace.console import make_console
from vethtrace.errors import ExitStatus, UserError, require_root
from vethtrace.render import trace as render

LOST_CHECK_S = 0.1  # read the kernel's loss counter this often
LOST_NOTICE_S = 1.0  # at most one loss notice (stderr, --json, recording) this often
SCOPE_CHECK_S = 0.5
SLICE = 64  # events shown between two looks at the clock (~10 ms on a busy machine)
DRAIN_BUDGET = 512  # records read at the deadline (a few ms of decoding)
DRAIN_GRACE_S = 0.02  # and shown for at most this long
DEFAULT_BUFFER_KIB = 8192


def _recorder(path: str, plan: Any, netns: list[str], filter_expr: str, pcap: str | None) -> Any:
    from vethtrace.record import Recorder

    # The scope goes into the header so `report` checks the same namespaces.
    scope = {"filter": filter_expr, "netns": list(netns)}
    rec = Recorder(path, command=sys.argv, plan=plan.describe(), pcap=pcap, trace=scope)
    try:
        from vethtrace.topology import discover

        rec.topology(discover(netns or None))
    except UserError:
        raise
    except Exception as exc:  # a recording without topology is still useful
        print(f"vethtrace trace: topology not recorded: {exc}", file=sys.stderr)
    return rec


def ring_pages_of(buffer_kib: int | None) -> int:
    """--buffer KIB as ring buffer pages: a power of two of at least one page."""
    kib = DEFAULT_BUFFER_KIB if buffer_kib is None else buffer_kib
    pages = kib * 1024 // mmap.PAGESIZE
    if kib * 1024 % mmap.PAGESIZE or pages < 1 or pages & (pages - 1) or kib > 1 << 20:
        raise UserError(
            f"--buffer {kib}: give KiB as a power of two from {mmap.PAGESIZE // 1024} to 1048576"
        )
    return pages


def run(
    filter: list[str] | str | None = None,
    netns: list[str] | None = None,
    duration: float | None = None,
    as_json: bool = False,
    write: str | None = None,
    pcap: str | None = None,
    wait: bool = False,
    buffer: int | None = None,
    nftrace: bool = False,
    **_: object,
) -> int:
    netns = netns or []
    if duration is not None and not duration > 0:
        raise UserError("--duration must be positive")
    pages = ring_pages_of(buffer)
    require_root("tracing")
    inodes = [netnsmod.inode_of(n) for n in netns] or None
    out = make_console()
    status = make_console(stderr=True) if as_json or not out.is_terminal else out
    collector = BpfCollector(filter or "", inodes, ringbuf_pages=pages)  # bad filter fails here
    session = _nftrace_session(collector.filter, netns) if nftrace else None
    sink = _Sink(out, status, as_json, Clock())
    started = time.monotonic()
    # Ctrl-C only sets a flag: the loop then drains, detaches and summarises,
    # wherever the signal lands (compiling, printing, polling).
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    code = ExitStatus.OK
    sniffers = None
    try:
        with collector:
            with status.status("compiling and attaching probes…", spinner="dots"):
                plan = collector.start()
            _vxlan_ports_later(collector, netns)
            scope = _scope(netns)
            pcap_notes: list[str] = []
            if pcap:  # capturing before "tracing…" is said
                from vethtrace.commands.trace_pcap import PcapTap

                sniffers = PcapTap(pcap, netns, collector.filter)
                pcap_notes = sniffers.start()
            t = collector.timings
            ready = t.get("btf", 0) + t.get("compile_attach", 0)
            how = "cached programs" if collector.from_cache else "compiled"
            status.print(
                f"tracing… ({plan.one_line()}; headers {plan.headers}; "
                f"{how}, ready in {ready:.2f} s)"
                + (f" filter: {collector.filter.text}" if collector.filter.text else "")
                + ("  Ctrl-C to stop" if duration is None else ""),
                style="dim",
                highlight=False,
            )
            if plan.blind_line():
                status.print(f"cannot see: {plan.blind_line()}", style="dim", highlight=False)
            for why in pcap_notes:
                status.print(f"pcap: {why}", style="yellow", highlight=False)
            if session is not None:
                session.start()  # closed below, whatever happens
                for note in session.notes:
                    status.print(f"note: {note}", style="dim", highlight=False)
            if write:
                sink.rec = _recorder(write, plan, netns, collector.filter.text, pcap)
            sink.header()
            started = time.monotonic()
            deadline = started + duration if duration else None
            try:
                code = _loop(collector, sink, scope, sniffers, session, stop, deadline, wait)
            finally:
                late = deadline is not None and time.monotonic() >= deadline
                # At the deadline: what the ring holds is read with a budget and
                # shown for at most DRAIN_GRACE_S more; otherwise everything.
                sink.events(
                    collector.drain(DRAIN_BUDGET if late else None),
                    deadline=time.monotonic() + DRAIN_GRACE_S if late else None,
                )
                sink.check_lost(collector.lost, force=True)
                if session is not None:
                    sink.nft(session.poll())
                    session.close()
                collector.close()
                if sniffers is not None:
                    sniffers.close()
                if sink.rec is not None:
                    sink.rec.close(lost=sink.lost)
    finally:
        signal.signal(signal.SIGINT, previous)
    sink.summary.render(status, sink.lost, time.monotonic() - started)
    if sink.unshown:
        status.print(
            f"{sink.unshown:,} events read after the deadline were not shown", style="yellow"
        )
    if sniffers is not None:
        status.print(f"pcap: {sniffers.count:,} frames written to {pcap}", style="dim")
    return int(code)


def _nftrace_session(flt: Any, netns: list[str]) -> Any:
    from vethtrace.collect.nftrace import NftraceSession, scopes_named

    return NftraceSession(flt, scopes_named(netns))


def _vxlan_ports_later(collector: BpfCollector, netns: list[str]) -> None:
    """Decode VXLAN on the scope's VXLAN devices' ports too (flannel's 8472...):
    the topology is discovered in the background a second after the probes
    are attached (its imports and netlink dumps would otherwise compete with
    the first events for the interpreter: +0.2 s to the first one, measured),
    and the ports are map data. Until then (or if discovery fails) only 4789
    is decoded."""

    def work() -> None:
        time.sleep(1.0)
        try:
            from vethtrace.collect.runcfg import VXLAN_DEFAULT, vxlan_ports_of
            from vethtrace.topology import discover

            ports = vxlan_ports_of(discover(netns or None))
            if set(ports) - {VXLAN_DEFAULT}:
                collector.set_vxlan_ports(ports)
        except Exception:  # the default port stays decoded
            pass

    threading.Thread(target=work, name="vxlan-ports", daemon=True).start()


def _scope(netns: list[str]) -> Any:
    if not netns:
        return None  # every namespace: there is no scope to lose
    from vethtrace.topology.scope import ScopeWatch

    return ScopeWatch(netns)


def _loop(
    collector: BpfCollector,
    sink: _Sink,
    scope: Any,
    sniffers: Any,
    session: Any,
    stop: threading.Event,
    deadline: float | None,
    wait: bool,
) -> ExitStatus:
    next_lost = next_scope = 0.0
    while not stop.is_set():
        now = time.monotonic()
        remaining = None if deadline is None else deadline - now
        if remaining is not None and remaining <= 0:
            break
        wait_ms = 100 if remaining is None else max(1, min(100, int(remaining * 1000)))
        sink.events(collector.poll(wait_ms), deadline)
        if session is not None:
            sink.nft(session.poll())
        now = time.monotonic()
        if now >= next_lost:
            sink.check_lost(collector.lost)
            next_lost = now + LOST_CHECK_S
        if sniffers is not None:
            sniffers.write_ready()
        if scope is not None and now >= next_scope:
            next_scope = now + SCOPE_CHECK_S
            for change in scope.check(now):
                sink.scope(change)
            if not scope.traced and not wait:
                sink.status.print(
                    "vethtrace trace: nothing left to trace (every namespace of -n is gone); "
                    "stopping (--wait keeps tracing)",
                    style="bold yellow",
                    highlight=False,
                )
                return ExitStatus.FINDINGS  # 1: ended early, the scope is gone
    return ExitStatus.OK


class _Sink:
    """Where everything trace says goes: lines or JSON on stdout, notices on
    stderr, the recording. Counts what the summary reports."""

    def __init__(self, out: Any, status: Any, as_json: bool, clock: Clock) -> None:
        self.out, self.status, self.as_json, self.clock = out, status, as_json, clock
        self.names = render.NetnsNames()
        self.summary = render.Summary()
        self.rec: Any = None
        self.t0: int | None = None
        self.lost = 0
        self.unshown = 0  # read after the deadline, not shown
        self._lost_reported = 0
        self._lost_notice_at = 0.0
        self.width = render.line_width(out)

    def header(self) -> None:
        if not self.as_json:
            self.out.print(render.header(self.width), style="bold", highlight=False)

    def events(self, events: list[Any], deadline: float | None) -> None:
        for start in range(0, len(events), SLICE):
            if deadline is not None and time.monotonic() >= deadline:
                self.unshown += len(events) - start
                return
            for ev in events[start : start + SLICE]:
                self._event(ev)
            if self.as_json or self.width is None:
                sys.stdout.flush()

    def _event(self, ev: Any) -> None:
        if self.t0 is None:
            self.t0 = ev.ts_ns
        self.summary.add(ev)
        if self.rec is not None:
            self.rec.event(ev)
        if self.as_json:
            print(render.json_line(ev, self.names, self.clock), flush=False)
        elif self.width is None:  # piped: no styles to render, ~10x faster than rich
            sys.stdout.write(render.line(ev, self.t0, self.names).plain + "\n")
        else:
            self.out.print(render.line(ev, self.t0, self.names, self.width), soft_wrap=True)

    def nft(self, events: list[Any]) -> None:
        """Rule verdicts from the kernel's nftables trace, as lines among the events."""
        if not events:
            return
        from vethtrace.render import nftrace as nftrender

        for ev in events:
            if self.t0 is None:
                self.t0 = ev.ts_ns
            if self.rec is not None:
                self.rec.nftrace(ev)
            name = self.names.name(ev.netns)
            if self.as_json:
                print(json.dumps(nftrender.json_obj(ev, name), separators=(",", ":")))
            else:
                self.out.print(nftrender.line(ev, self.t0, self.names.name), soft_wrap=True)

    def _notice(self, kind: str, data: dict[str, Any], text: str, style: str) -> None:
        ts = time.monotonic_ns()
        record = {"ts_ns": ts, "time": self.clock.rfc3339(ts), **data}
        if self.rec is not None:
            self.rec.notice(kind, record)
        if self.as_json:
            print(render.notice_line(kind, record), flush=True)
        self.status.print(f"vethtrace trace: {text}", style=style, highlight=False)

    def check_lost(self, total: int, force: bool = False) -> None:
        """A `lost` notice when the kernel's count grew, at most once a second
        (the rest is added to the next one), and always at the end."""
        self.lost = total
        new = total - self._lost_reported
        now = time.monotonic()
        if new <= 0 or (not force and now - self._lost_notice_at < LOST_NOTICE_S):
            return
        self._lost_reported, self._lost_notice_at = total, now
        self._notice(
            "lost",
            {"lost": new, "total": total},
            f"{new:,} events lost ({total:,} so far): the ring buffer was full; "
            "narrow FILTER or -n, or raise --buffer",
            "bold red",
        )

    def scope(self, change: Any) -> None:
        data = {
            "change": change.change,
            "netns": change.netns,
            "inode": change.inode,
            "interface": change.interface,
            "left": change.left,
        }
        style = "yellow" if change.change in ("netns-gone", "iface-gone") else "dim"
        extra = ""
        if change.change == "netns-back":
            extra = ": not traced (the probes hold the old inode); restart trace to trace it"
        self._notice("scope", data, change.text() + extra, style)
