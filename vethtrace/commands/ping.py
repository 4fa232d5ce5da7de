"""`vethtrace ping [--from NETNS] NETNS IP`: send a real ping, watch every hop, one verdict.

The order of work is chosen for time-to-verdict (target: <= 2 s including the
BPF compile): the probe compile/attach, the topology snapshot and the route
lookup start at once in threads; sniffers open as soon as the path is known;
the first echo leaves the moment probes and sniffers are attached; the verdict
is re-evaluated every few milliseconds and the run stops as soon as it is
certain (first echo reply; ARP reply taken by a bridge while the port's entry
stays INCOMPLETE; a kernel drop of our packet), or at --timeout.

This module is the wiring. The collectors live in vethtrace.collect: `pinger`
(the echo sender, a raw socket in the source namespace so the kernel does ARP
itself), `neighwatch` (the next hop's neighbour entry), `sniff` and `bpf`; the
namespaces on the way come from `topology.discover_between`, the expected
path from `diagnose.verdict.make_plan`, the verdict from `judge`, the output
from `render.ping` and the recording from `record.write_ping`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import queue
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vethtrace import netns
from vethtrace.collect.neighwatch import NeighWatch
from vethtrace.collect.pinger import Pinger
from vethtrace.collect.sniff import Frame, SnifferSet, Target, load_scapy
from vethtrace.diagnose.verdict import Analysis, PingPlan, decide, judge, make_plan
from vethtrace.errors import ExitStatus, UserError, require_root
from vethtrace.model import Finding, IfaceKey, ProbeEvent, Topology, Verdict

if TYPE_CHECKING:
    from vethtrace.render.ping import PingReport

TICK_S = 0.01


# --- input ------------------------------------------------------------------


def parse_ip(text: str) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise UserError(f"{text!r} is not an IP address") from None
    if addr.version != 4:
        raise UserError(f"{text}: only IPv4 is supported by ping for now")
    return str(addr)


def _check_netns(name: str) -> None:
    if not netns.exists(name):
        raise UserError(f"no network namespace named {name!r} (see `ip netns list`)")


# --- the expected path --------------------------------------------------------


def route_get(source: str, ip: str) -> dict[str, Any]:
    """The kernel's own route lookup in the source namespace (`ip route get`)."""

    def lookup() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "-j", "-4", "route", "get", ip], capture_output=True, text=True, timeout=5
        )

    res = netns.run_in(source, lookup)
    if res.returncode != 0:
        msg = res.stderr.strip().removeprefix("RTNETLINK answers: ") or "route lookup failed"
        return {"error": msg}
    data = json.loads(res.stdout or "[]")
    return data[0] if data else {"error": "no route"}


# --- kernel probes (PROBES' collector), optional -------------------------------


def _start_kernel(filter_text: str, inodes: list[int] | None) -> tuple[Any, str | None]:
    """Compile and attach the kernel probes; (collector, None) or (None, why not).

    Only the areas the verdict reads (device tx/rx, drops, neighbours), no
    function probes: fewer programs compile faster, and netif_receive_skb on
    the master already shows a bridge taking a frame."""
    try:
        from vethtrace.collect.bpf import BpfCollector
    except ImportError as exc:
        return None, f"kernel probes unavailable ({exc}); sniffers and netlink only"
    coll = None
    try:
        coll = BpfCollector(filter_text, inodes, areas=("dev", "drop", "neigh"), functions=False)
        coll.start()
        return coll, None
    except Exception as exc:  # degrade to sniffers + netlink, and say so
        if coll is not None:
            coll.close()
        what = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        return None, f"kernel probes unavailable ({what}); sniffers and netlink only"


# --- the run -------------------------------------------------------------------


@dataclass
class Run:
    plan: PingPlan
    topo: Topology
    events: list[ProbeEvent] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)
    verdict: Verdict | None = None
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lost: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    probe_plan: Any = None  # the probe plan's describe(), for the recording header
    analysis: Analysis | None = None  # what the final verdict was drawn from
    predicted: dict[str, Any] | None = None  # the path model's prediction, for --json

    def report(self) -> PingReport:
        from vethtrace.render.ping import PingReport

        return PingReport(
            self.plan, self.verdict, self.events, self.topo, self.findings,
            self.warnings, self.notes, self.timings, self.analysis, self.predicted,
        )  # fmt: skip

    @property
    def relevant(self) -> set[int]:
        """Namespaces on the path: kernel events elsewhere are someone else's traffic."""
        p = self.plan
        return {p.source_inode, p.target_inode} | {k.netns for k in p.path}


def static_findings(topo: Topology, names: list[str]) -> tuple[list[Finding], str | None]:
    try:
        from vethtrace.diagnose.check import run_rules
    except ImportError as exc:
        return [], f"static checks unavailable ({exc})"
    return run_rules(topo, names), None


def execute(
    source: str,
    target_netns: str,
    ip: str,
    count: int,
    timeout: float,
    size: int = 56,
    collector: Any = None,
) -> Run:
    """Everything but rendering; returns the finished run (also used by the tests).

    `collector`: an already started BpfCollector to reuse (tests run dozens of pings
    in one process; the compile is the expensive part). It is drained of older
    events first and left open; without it, ping compiles, attaches and closes
    its own.

    Whatever starts is stopped by the exit stack, also on Ctrl-C and errors:
    nothing may stay attached, open or running. On the normal path the
    sniffers, watch and pinger are stopped earlier, in order, so their last
    frames and events are collected (stopping twice is harmless)."""
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ping-setup")
        stack.callback(pool.shutdown, wait=False, cancel_futures=True)
        kernel_f: Future[tuple[Any, str | None]] | None = None
        if collector is None:
            kernel_f = pool.submit(_start_kernel, "arp or icmp", None)
            # our own collector is closed when we leave, or when it finishes
            # attaching if that is after we gave up
            stack.callback(kernel_f.add_done_callback, _close_late)
        else:
            collector.drain()  # what happened before this ping is not its evidence
        pool.submit(load_scapy)  # ~0.4 s of imports, off the critical path
        route_f = pool.submit(route_get, source, ip)
        from vethtrace.topology import discover_between  # imported while probes compile

        topo = discover_between(source, target_netns)
        timings["topology"] = time.monotonic() - t0
        plan, warnings = make_plan(
            source, netns.inode_of(source), target_netns, netns.inode_of(target_netns),
            ip, topo, route_f.result(), count, timeout,
        )  # fmt: skip
        plan.size = size
        run = Run(plan=plan, topo=topo, warnings=warnings)
        path_names = sorted({topo.netns_name(k.netns, "") for k in plan.path} - {""})
        findings_f = pool.submit(static_findings, topo, path_names or [plan.source])
        events: queue.Queue[ProbeEvent] = queue.Queue()
        coll: Any = None
        if plan.route_error is None:
            targets = [_target(topo, k) for k in plan.path]
            sniffers = SnifferSet([t for t in targets if t is not None])
            stack.callback(_quietly, sniffers.stop)
            sniffers.start()
            timings["sniffers"] = time.monotonic() - t0
            src_ns = topo.netns(plan.source_inode)
            names = {i.key.ifindex: i.name for i in src_ns.interfaces} if src_ns else {}
            watch = NeighWatch(source, plan.source_inode, plan.nexthop, names, events.put)
            stack.callback(_quietly, watch.stop)
            watch.start()
            coll, why = kernel_f.result() if kernel_f is not None else (collector, None)
            timings["probes"] = time.monotonic() - t0
            if kernel_f is not None:  # our own compile, not a reused collector's
                for k, v in (getattr(coll, "timings", None) or {}).items():
                    timings[f"probes_{k}"] = v
            if why:
                run.notes.append(why)
            plan.started_ns = time.monotonic_ns()
            pinger = Pinger(source, ip, count, events.put, plan.source_inode, size)
            stack.callback(_quietly, pinger.stop)
            pinger.start()
            deadline = time.monotonic() + timeout
            while True:
                _collect(run, events, coll, sniffers)
                v = decide(plan, run.events, topo, final=False, now_ns=time.monotonic_ns())
                if v is not None:
                    timings["verdict"] = time.monotonic() - t0
                    break
                if time.monotonic() >= deadline:
                    break
                time.sleep(TICK_S)
            pinger.stop()
            watch.stop()
            rest = sniffers.stop()
            run.frames += rest
            run.events += [f.event for f in rest]
            run.notes += sniffers.failed
        _collect(run, events, coll, None)
        if coll is not None:
            run.lost = int(getattr(coll, "lost", 0) or 0)
            run.probe_plan = _describe(coll)
            if coll is not collector:
                coll.close()
        run.findings, why = findings_f.result()
        if why:
            run.notes.append(why)
        run.events.sort(key=lambda e: e.ts_ns)
        decision = judge(plan, run.events, topo, run.findings, final=True)
        run.verdict, run.analysis = decision.verdict, decision.analysis
        _compare_with_model(run, source, ip, size)
        timings.setdefault("verdict", time.monotonic() - t0)
        timings["total"] = time.monotonic() - t0
        run.timings = timings
        return run


# Decisions the model names better than the place a frame was last seen (#15):
# the verdict's culprit becomes the decision's place for these kinds.
MODEL_CULPRITS = {
    "missing-masquerade", "proxy-arp-missing", "bridge-port-flood-off",
    "neighbour-wrong-mac", "netfilter-forward-drop",
}  # fmt: skip


def _compare_with_model(run: Run, source: str, ip: str, size: int) -> None:
    """Predict the same ping from the tables; put it beside the observation, say
    plainly when the two disagree, and let the failing decision be the culprit
    where the model names it better (MODEL_CULPRITS)."""
    try:
        from vethtrace.diagnose.path import Flow, predict
        from vethtrace.diagnose.rules.paths import rule_of

        src_name = run.topo.netns_name(run.plan.source_inode, source)
        pred = predict(run.topo, Flow(src_name, ip, "icmp", size=size + 28))
    except Exception as exc:  # the model must never cost the observed verdict
        run.notes.append(f"path prediction unavailable: {type(exc).__name__}: {exc}")
        return
    run.predicted = pred.to_dict()
    v = run.verdict
    if v is None:
        return
    failing, unknown = pred.first_failure, pred.first_unknown
    if v.reachable != pred.ok and not (unknown is not None and failing is None):
        said = "reachable" if pred.ok else f"lost at {failing.where if failing else '?'}"
        run.notes.append(
            f"observation and prediction disagree: the kernel's tables predict the ping "
            f"{said}, but it was {'answered' if v.reachable else 'not answered'}; either a "
            "model gap or something the tables cannot show"
        )
        return
    if not v.reachable and failing is not None and rule_of(failing) in MODEL_CULPRITS:
        netns_name, iface = failing.culprit
        v.culprit_netns, v.culprit_interface = netns_name, iface
        ns = run.topo.netns_by_name(netns_name)
        it = ns.iface_by_name(iface) if ns is not None and iface else None
        v.culprit = it.key if it is not None else None
        v.summary = f"{v.summary}; the decision that lost it: {failing.decision} at {failing.where}"
        if failing.cause:
            v.explanation = f"{failing.cause}. {v.explanation}".strip()
        if failing.fix:
            v.fix = list(failing.fix)


def _quietly(stop: Callable[[], object]) -> None:
    """Stop something while leaving: an error here must not hide the first one."""
    with contextlib.suppress(Exception):
        stop()


def _close_late(f: Future[tuple[Any, str | None]]) -> None:
    """A collector that finished attaching after we gave up is closed at once."""
    with contextlib.suppress(Exception):
        coll, _why = f.result()
        if coll is not None:
            coll.close()


def _describe(coll: Any) -> Any:
    """The probe plan as JSON-able data for the recording header (Plan.describe(),
    the shape `trace --write` writes too)."""
    plan = getattr(coll, "plan", None)
    return plan.describe() if plan is not None else None


def _target(topo: Topology, key: IfaceKey) -> Target | None:
    ns = topo.netns(key.netns)
    it = topo.iface(key)
    if ns is None or it is None:
        return None
    ref = (
        ns.name
        if ns.named or ns.name == netns.ROOT
        else (f"/proc/{ns.pids[0]}/ns/net" if ns.pids else ns.name)
    )
    return Target(netns=ref, netns_inode=key.netns, ifname=it.name, ifindex=key.ifindex)


def _collect(
    run: Run, events: queue.Queue[ProbeEvent], coll: Any, sniffers: SnifferSet | None
) -> None:
    while True:
        try:
            run.events.append(events.get_nowait())
        except queue.Empty:
            break
    if sniffers is not None:
        for fr in sniffers.drain():
            run.frames.append(fr)
            run.events.append(fr.event)
    if coll is not None:
        # probes see every namespace (they compile before the path is known);
        # keep what happened on the path
        keep = run.relevant
        fresh = coll.poll(0) if sniffers is not None else coll.drain()
        run.events += [e for e in fresh if e.netns in keep]


def run(
    target_netns: str,
    ip: str,
    source: str | None = None,
    count: int = 3,
    timeout: float = 5.0,
    size: int = 56,
    as_json: bool = False,
    write: str | None = None,
    pcap: str | None = None,
) -> int:
    ip = parse_ip(ip)
    if count < 1:
        raise UserError("--count must be at least 1")
    if not 0 <= size <= 65507:
        raise UserError("--size must be between 0 and 65507 bytes")
    if not 0 < timeout <= 600:
        raise UserError("--timeout must be between 0 and 600 seconds")
    require_root("vethtrace ping")
    source = source or netns.ROOT
    _check_netns(source)
    _check_netns(target_netns)
    r = execute(source, target_netns, ip, count, timeout, size)
    if pcap:
        from vethtrace.collect.pcapng import write_frames

        try:
            names = {n.inode: (n.name, n.container) for n in r.topo.namespaces}
            write_frames(pcap, r.frames, names)
        except OSError as exc:
            raise UserError(f"cannot write {pcap}: {exc.strerror}") from None
    if write:
        from vethtrace.record import write_ping

        write_ping(
            write, command=sys.argv, probe_plan=r.probe_plan, pcap=pcap, plan=r.plan,
            topology=r.topo, events=r.events, findings=r.findings, verdict=r.verdict,
            lost=r.lost, warnings=r.warnings, notes=r.notes, timings=r.timings,
        )  # fmt: skip
    from vethtrace.render import ping as render

    for w in r.warnings:
        print(f"vethtrace ping: warning: {w}", file=sys.stderr)
    report = r.report()
    if as_json:
        print(json.dumps(render.to_json(report), indent=2))
    else:
        from vethtrace.console import make_console

        report.warnings = ()  # already on stderr
        render.show(make_console(), report)
    assert r.verdict is not None
    return int(ExitStatus.OK if r.verdict.reachable else ExitStatus.FINDINGS)
