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
from `render.ping`; `ping_files` writes the recording and the pcapng as the
run goes (and closes them as valid files when it is interrupted).

Over 400 lines: a live ping starts and stops five collectors (pinger,
neighbour watch, sniffers, BPF probes, --nftrace) around one send loop; the
wiring of each stays next to the ExitStack that unwinds it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import queue
import signal
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
from vethtrace.diagnose.verdict.model import compare
from vethtrace.errors import ExitStatus, UserError, require_root
from vethtrace.model import Finding, IfaceKey, NftraceEvent, ProbeEvent, Topology, Verdict

if TYPE_CHECKING:
    from vethtrace.commands.ping_files import PingFiles
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


def refuse_non_unicast(ip: str, source: str, target: str) -> None:
    """ping follows one unicast echo to the one namespace that holds the address;
    any other kind of target would get a verdict about the wrong thing (a
    broadcast is refused by the socket, 0.0.0.0 is answered by the sender
    itself, a multicast group has no single owner). Refuse them with one line.
    Subnet broadcasts are the kernel's call: `ip route get` in the source and
    the target namespace says `broadcast` for any connected subnet's."""
    addr = ipaddress.IPv4Address(ip)
    why = None
    if addr.is_unspecified:
        why = "the unspecified address (Linux answers it from the sender itself)"
    elif addr == ipaddress.IPv4Address("255.255.255.255"):
        why = "the limited broadcast address"
    elif addr.is_multicast:
        why = "a multicast address (a group has no one owner)"
    elif addr.is_loopback:
        why = "a loopback address (it never leaves the sending namespace)"
    else:
        for ns in dict.fromkeys((source, target)):
            if route_get(ns, ip).get("type") == "broadcast":
                why = f"the broadcast address of a subnet connected in {ns}"
                break
    if why:
        raise UserError(
            f"{ip} is {why}; ping needs the unicast address a namespace holds"
        )


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
        from vethtrace.collect.prepare import VARIANTS
    except ImportError as exc:
        return None, f"kernel probes unavailable ({exc}); sniffers and netlink only"
    coll = None
    try:
        coll = BpfCollector(filter_text, inodes, **VARIANTS["ping"])  # the set prepared at set-up
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
    files: PingFiles | None = None  # --write/--pcap: evidence written as it arrives
    analysis: Analysis | None = None  # what the final verdict was drawn from
    predicted: dict[str, Any] | None = None  # the path model's prediction, for --json
    nftrace: list[NftraceEvent] = field(default_factory=list)  # --nftrace's rule verdicts
    rule: dict[str, Any] | None = None  # the rule that dropped it (diagnose/nftrace.py)
    traced: bool = False  # --nftrace was given (the rule is traced, not predicted)

    def report(self) -> PingReport:
        from vethtrace.render.ping import PingReport

        return PingReport(
            self.plan, self.verdict, self.events, self.topo, self.findings,
            self.warnings, self.notes, self.timings, self.analysis, self.predicted,
            nftrace=self.nftrace, rule=self.rule,
        )  # fmt: skip

    @property
    def relevant(self) -> set[int]:
        """Namespaces on the path: kernel events elsewhere are someone else's traffic."""
        p = self.plan
        on_path = {p.source_inode, p.target_inode} | {k.netns for k in p.path}
        return on_path | _underlays(self.topo, on_path)


def _underlays(topo: Topology, inodes: set[int]) -> set[int]:
    """Namespaces a VXLAN device on the path tunnels through: the veth peer of
    each one's underlay device (where the encapsulated packet can be lost)."""
    out: set[int] = set()
    for inode in inodes:
        ns = topo.netns(inode)
        for it in ns.interfaces if ns else ():
            if it.vxlan is None or it.vxlan.link is None:
                continue
            lower = ns.iface(it.vxlan.link) if ns else None
            if lower is not None and lower.peer is not None:
                out.add(lower.peer.netns)
    return out


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
    files: PingFiles | None = None,
    nftrace: bool = False,
) -> Run:
    """Everything but rendering; returns the finished run (also used by the tests).

    `collector`: an already started BpfCollector to reuse (tests run dozens of pings
    in one process; the compile is the expensive part). It is drained of older
    events first and left open; without it, ping compiles, attaches and closes
    its own.

    Whatever starts is stopped by the exit stack, also on Ctrl-C and errors:
    nothing may stay attached, open or running. On the normal path the
    sniffers, watch and pinger are stopped earlier, in order, so their last
    frames and events are collected (stopping twice is harmless).

    `nftrace`: mark this flow's packets for the kernel's nftables tracer in
    every namespace on the path (collect/nftrace.py; its tables are removed
    when we leave) and name the rule that dropped them."""
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
        run = Run(plan=plan, topo=topo, warnings=warnings, files=files, traced=nftrace)
        path_names = sorted({topo.netns_name(k.netns, "") for k in plan.path} - {""})
        findings_f = pool.submit(static_findings, topo, path_names or [plan.source])
        events: queue.Queue[ProbeEvent] = queue.Queue()
        coll: Any = None
        session = _start_nftrace(run, stack) if nftrace else None
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
            if coll is not None and kernel_f is not None:  # VXLAN on the devices' ports
                from vethtrace.collect.runcfg import vxlan_ports_of

                coll.set_vxlan_ports(vxlan_ports_of(topo))
            timings["probes"] = time.monotonic() - t0
            if kernel_f is not None:  # our own compile, not a reused collector's
                for k, v in (getattr(coll, "timings", None) or {}).items():
                    timings[f"probes_{k}"] = v
            if why:
                run.notes.append(why)
            plan.started_ns = time.monotonic_ns()
            if files is not None:
                files.start(run, _describe(coll))
            pinger = Pinger(source, ip, count, events.put, plan.source_inode, size)
            stack.callback(_quietly, pinger.stop)
            pinger.start()
            deadline = time.monotonic() + timeout
            while True:
                _collect(run, events, coll, sniffers)
                if session is not None:
                    run.nftrace += session.poll()
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
            if files is not None:
                files.add([f.event for f in rest], rest)
            run.notes += sniffers.failed
        _collect(run, events, coll, None)
        if session is not None:
            time.sleep(0.02)  # trace messages are queued before the drop we saw
            run.nftrace += session.poll()
            session.close()
            run.notes += session.notes
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
        checked = compare(run.verdict, plan, topo)
        run.verdict, run.predicted = checked.verdict, checked.predicted
        run.notes.extend(checked.notes)
        _name_rule(run, nftrace)
        timings.setdefault("verdict", time.monotonic() - t0)
        timings["total"] = time.monotonic() - t0
        run.timings = timings
        return run


def _start_nftrace(run: Run, stack: contextlib.ExitStack) -> Any:
    """Trace this flow (`host IP`: the echoes, their replies, ARP about it) in
    every namespace on the path; the tables go when the stack unwinds."""
    from vethtrace.collect.nftrace import NftraceSession, scopes

    session = NftraceSession(f"host {run.plan.ip}", scopes(run.topo, run.relevant))
    stack.callback(_quietly, session.close)
    session.start()
    run.timings["nftrace"] = session.timings.get("nftrace_setup", 0.0)
    return session


def _name_rule(run: Run, nftrace: bool) -> None:
    """The rule culprit: traced with --nftrace, predicted from the ruleset
    without (diagnose/nftrace.py, which report calls alike)."""
    from vethtrace.diagnose import nftrace as nftdiag
    from vethtrace.diagnose.rules.firewall import legacy_tables, legacy_text

    if not nftrace:  # (with it, the session said so as it added its tables)
        for inode in sorted(run.relevant):
            ns = run.topo.netns(inode)
            if ns is not None and legacy_tables(ns):
                run.notes.append(legacy_text(ns))
    drop = any(e.drop_reason == "NETFILTER_DROP" for e in run.events)
    run.rule, notes = nftdiag.name_rule(
        run.verdict, run.plan.ip, run.nftrace, nftrace, drop, run.predicted, run.topo
    )
    run.notes += notes


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
    new: list[ProbeEvent] = []
    frames: list[Frame] = []
    while True:
        try:
            new.append(events.get_nowait())
        except queue.Empty:
            break
    if sniffers is not None:
        frames = sniffers.drain()
        new += [fr.event for fr in frames]
    if coll is not None:
        # probes see every namespace (they compile before the path is known);
        # keep what happened on the path
        keep = run.relevant
        fresh = coll.poll(0) if sniffers is not None else coll.drain()
        new += [e for e in fresh if e.netns in keep]
    run.frames += frames
    run.events += new
    if run.files is not None:
        run.files.add(new, frames)


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
    nftrace: bool = False,
    agents: str | None = None,
    token_file: str | None = None,
) -> int:
    if agents is not None or token_file is not None:
        if agents is None or write or pcap or nftrace:
            raise UserError("--token-file goes with --agents, which takes no --write, --pcap, "
                            "--nftrace")  # fmt: skip
        from vethtrace.commands import ping_agents

        return ping_agents.run(agents, token_file, target_netns, ip, source, count, timeout,
                               size, as_json)  # fmt: skip
    ip = parse_ip(ip)  # --count, --size, --timeout: checked by cli's validators
    require_root("vethtrace ping")
    source = source or netns.ROOT
    _check_netns(source)
    _check_netns(target_netns)
    refuse_non_unicast(ip, source, target_netns)
    files = None
    try:
        if write or pcap:
            from vethtrace.commands.ping_files import PingFiles

            files = PingFiles(write, pcap)  # opened now: a bad path fails before the run
        r = execute(source, target_netns, ip, count, timeout, size, files=files,
                    nftrace=nftrace)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (vethtrace.signals)
        if files is not None:
            signum = getattr(exc, "signum", signal.SIGINT)
            files.interrupted(signal.Signals(signum).name)
        raise
    if files is not None:
        files.finish(r)
    from vethtrace.render import ping as render

    for w in r.warnings:
        print(f"vethtrace ping: warning: {w}", file=sys.stderr)
    report = r.report()
    if as_json:
        print(json.dumps(render.to_json(report), indent=2))
    else:
        from vethtrace.console import make_console

        report.warnings = ()  # already on stderr
        render.show(make_console(), report, notes_to=make_console(stderr=True))
    assert r.verdict is not None
    return int(ExitStatus.OK if r.verdict.reachable else ExitStatus.FINDINGS)
