"""`vethtrace trace [FILTER] [-n NETNS ...] [--duration S] [--json] [--write FILE]
[--pcap FILE] [--wait] [--buffer KIB]`.

Streams kernel packet events (see collect/bpf.py for what each carries).
Status (spinner, the "tracing…" line with the plan, the summary) goes to
stderr when --json is given, so stdout stays one JSON object per line.

Start to attached is kept short (issue #18): before the probes are attached
only what attaching needs runs (the filter, the -n inodes, the collector);
the output's set-up (rich, the namespace names: trace_sink.py) and the scope
watch come after, while events already wait in the ring buffer. The
"tracing…" line says when the probes were attached, counted from exec.

What must never be silent while it runs (issue #20): events the kernel could
not deliver (a `lost` notice as it happens, rate-limited on stderr, a record
in --json and in the recording), and the scope vanishing under it (a `scope`
notice; with nothing left to trace it ends, exit 1, unless --wait). The
deadline holds under a flood: events are shown in slices between clock
checks, and at the deadline the ring is read with a small budget, not
emptied; what was read and not shown by then is counted in the summary.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from vethtrace import netns as netnsmod
from vethtrace.collect.bpf import BpfCollector
from vethtrace.errors import ExitStatus, UserError, require_root

if TYPE_CHECKING:
    from vethtrace.commands.trace_sink import Sink

LOST_CHECK_S = 0.1  # read the kernel's loss counter this often
SCOPE_CHECK_S = 0.5
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
    collector = BpfCollector(filter or "", inodes, ringbuf_pages=pages)  # bad filter fails here
    session = _nftrace_session(collector.filter, netns) if nftrace else None
    started = time.monotonic()
    # Ctrl-C only sets a flag: the loop then drains, detaches and summarises,
    # wherever the signal lands (compiling, printing, polling).
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    code = ExitStatus.OK
    sniffers = None
    try:
        with collector:
            with _spinner(as_json, "compiling and attaching probes…"):
                plan = collector.start()
            attached = since_exec()
            # after attaching: the line saying so, then rich, the namespace names
            # and the scope watch (see the docstring)
            _vxlan_ports_later(collector, netns)
            pcap_notes: list[str] = []
            if pcap:  # capturing before "tracing…" is said
                from vethtrace.commands.trace_pcap import PcapTap

                sniffers = PcapTap(pcap, netns, collector.filter)
                pcap_notes = sniffers.start()
            line = _tracing_line(collector, plan, attached, duration)
            started = time.monotonic()  # --duration counts from this line
            on_terminal = _status_on_terminal(as_json)
            if not on_terminal:
                sys.stderr.write(line + "\n")  # as rich would (no styles in a pipe), before it
            from vethtrace.commands.trace_sink import Sink

            sink = Sink(as_json)
            status = sink.status
            if on_terminal:
                status.print(line, style="dim", highlight=False)
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
            scope = _scope(netns, inodes)
            sink.begin()  # the namespace names, the column header
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


def _status_on_terminal(as_json: bool) -> bool:
    """Whether status lines go to a terminal: stdout's when it is one and no
    --json, else stderr's (trace_sink.Sink.status is that console)."""
    return (not as_json and sys.stdout.isatty()) or sys.stderr.isatty()


def _spinner(as_json: bool, text: str) -> Any:
    """rich's spinner while the probes compile and attach, where status lines go
    to a terminal. Elsewhere it would show nothing, and rich is not imported
    before the probes are attached."""
    if not _status_on_terminal(as_json):
        return contextlib.nullcontext()
    from vethtrace.console import make_console

    return make_console(stderr=as_json or not sys.stdout.isatty()).status(text, spinner="dots")


def _tracing_line(collector: BpfCollector, plan: Any, attached: float, duration: Any) -> str:
    """The status line said once the probes are attached (tests and the bench wait for it)."""
    t = collector.timings
    ready = t.get("btf", 0) + t.get("compile_attach", 0)
    how = "cached programs" if collector.from_cache else "compiled"
    return (
        f"tracing… ({plan.one_line()}; headers {plan.headers}; "
        f"{how}, ready in {ready:.2f} s; attached {attached:.2f} s after start)"
        + (f" filter: {collector.filter.text}" if collector.filter.text else "")
        + ("  Ctrl-C to stop" if duration is None else "")
    )


def since_exec() -> float:
    """Seconds since this process was started (the kernel's start time, in
    clock ticks since boot: 10 ms steps), for the "attached … after start" note."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])  # field 22, counted from the state (field 3)
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


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


def _scope(netns: list[str], inodes: list[int] | None) -> Any:
    if not netns:
        return None  # every namespace: there is no scope to lose
    from vethtrace.topology.scope import ScopeWatch

    return ScopeWatch(netns, inodes)  # the inodes the probes hold


def _loop(
    collector: BpfCollector,
    sink: Sink,
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
                if change.change == "netns-back":  # re-created: the scope is map data
                    collector.add_netns([change.inode])
                    scope.adopt(change)
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
