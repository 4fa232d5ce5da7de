"""`vethtrace trace [FILTER] [-n NETNS ...] [--duration S] [--json] [--write FILE]`.

Streams kernel packet events (see collect/bpf.py for what each carries).
Status (spinner, the "tracing…" line with the plan, the summary) goes to
stderr when --json is given, so stdout stays one JSON object per line.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any

from vethtrace import netns as netnsmod
from vethtrace.collect.bpf import BpfCollector
from vethtrace.console import make_console
from vethtrace.errors import ExitStatus, UserError, require_root
from vethtrace.render import trace as render


def _inodes(names: list[str]) -> list[int] | None:
    if not names:
        return None
    return [netnsmod.inode_of(n) for n in names]


def _recorder(path: str, plan: Any, netns: list[str], filter_expr: str) -> Any:
    try:
        from vethtrace.record import Recorder
    except ImportError:
        raise UserError("--write needs vethtrace.record, which is not installed") from None
    # The scope goes into the header so `report` checks the same namespaces.
    scope = {"filter": filter_expr, "netns": list(netns)}
    rec = Recorder(path, command=sys.argv, plan=plan.describe(), trace=scope)
    try:
        from vethtrace.topology import discover

        rec.topology(discover(netns or None))
    except UserError:
        raise
    except Exception as exc:  # a recording without topology is still useful
        print(f"vethtrace trace: topology not recorded: {exc}", file=sys.stderr)
    return rec


def run(
    filter: list[str] | str | None = None,
    netns: list[str] | None = None,
    duration: float | None = None,
    as_json: bool = False,
    write: str | None = None,
    pcap: str | None = None,
    nftrace: bool = False,
    **_: object,
) -> int:
    netns = netns or []
    if pcap:
        raise UserError("trace --pcap is not supported (frames come from `ping --pcap`)")
    if duration is not None and duration <= 0:
        raise UserError("--duration must be positive")
    require_root("tracing")
    out = make_console()
    status = make_console(stderr=True) if as_json or not out.is_terminal else out
    collector = BpfCollector(filter or "", _inodes(netns))  # bad filter fails here
    session = _nftrace_session(collector.filter, netns) if nftrace else None
    names = render.NetnsNames()
    summary = render.Summary()
    rec = None
    lost = 0
    started = time.monotonic()
    # Ctrl-C only sets a flag: the loop then drains, detaches and summarises,
    # wherever the signal lands (compiling, printing, polling).
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with collector:
            with status.status("compiling and attaching probes…", spinner="dots"):
                plan = collector.start()
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
            if session is not None:
                session.start()  # closed below, whatever happens
                for note in session.notes:
                    status.print(f"note: {note}", style="dim", highlight=False)
            if write:
                rec = _recorder(write, plan, netns, collector.filter.text)
            if not as_json:
                out.print(render.HEADER, style="bold", highlight=False)
            t0: int | None = None
            started = time.monotonic()
            deadline = started + duration if duration else None
            try:
                while not stop.is_set():
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    wait = 100 if remaining is None else max(1, min(100, int(remaining * 1000)))
                    t0 = _emit(collector.poll(wait), t0, out, as_json, names, summary, rec)
                    t0 = _emit_nft(session, t0, out, as_json, names, rec)
            finally:
                t0 = _emit(collector.drain(), t0, out, as_json, names, summary, rec)
                t0 = _emit_nft(session, t0, out, as_json, names, rec)
                if session is not None:
                    session.close()
                lost = collector.lost
                collector.close()
                if rec is not None:
                    rec.close(lost=lost)
    finally:
        signal.signal(signal.SIGINT, previous)
    summary.render(status, lost, time.monotonic() - started)
    return int(ExitStatus.OK)


def _nftrace_session(flt: Any, netns: list[str]) -> Any:
    from vethtrace.collect.nftrace import NftraceSession, scopes_named

    return NftraceSession(flt, scopes_named(netns))


def _emit_nft(
    session: Any, t0: int | None, out: Any, as_json: bool, names: render.NetnsNames, rec: Any
) -> int | None:
    """Rule verdicts from the kernel's nftables trace, as lines among the events."""
    if session is None:
        return t0
    from vethtrace.render import nftrace as nftrender

    for ev in session.poll():
        if t0 is None:
            t0 = ev.ts_ns
        if rec is not None:
            rec.nftrace(ev)
        if as_json:
            print(json.dumps(nftrender.json_obj(ev, names.name(ev.netns)), separators=(",", ":")))
        else:
            out.print(nftrender.line(ev, t0, names.name), soft_wrap=True)
    return t0


def _emit(
    events: list[Any],
    t0: int | None,
    out: Any,
    as_json: bool,
    names: render.NetnsNames,
    summary: render.Summary,
    rec: Any,
) -> int | None:
    for ev in events:
        if t0 is None:
            t0 = ev.ts_ns
        summary.add(ev)
        if rec is not None:
            rec.event(ev)
        if as_json:
            print(render.json_line(ev, names), flush=False)
        else:
            out.print(render.line(ev, t0, names), soft_wrap=True)
    if events and as_json:
        sys.stdout.flush()
    return t0
