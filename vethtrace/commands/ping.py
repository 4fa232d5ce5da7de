"""`vethtrace ping [--from NETNS] NETNS IP`: send a real ping, watch every hop, one verdict.

The order of work is chosen for time-to-verdict (target: <= 2 s including the
BPF compile): the probe compile/attach, the topology snapshot and the route
lookup start at once in threads; sniffers open as soon as the path is known;
the first echo leaves the moment probes and sniffers are attached; the verdict
is re-evaluated every few milliseconds and the run stops as soon as it is
certain (first echo reply; ARP reply taken by a bridge while the port's entry
stays INCOMPLETE; a kernel drop of our packet), or at --timeout.

This module is the wiring; the collectors live in vethtrace.collect: `pinger`
(the echo sender, a raw socket in the source namespace so the kernel does ARP
itself), `neighwatch` (the next hop's neighbour entry), `sniff` and `bpf`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import queue
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vethtrace import netns
from vethtrace.collect.neighwatch import NeighWatch
from vethtrace.collect.pinger import Pinger
from vethtrace.collect.sniff import Frame, SnifferSet, Target, load_scapy
from vethtrace.diagnose.verdict import PingPlan, decide
from vethtrace.errors import ExitStatus, UserError, require_root
from vethtrace.model import Finding, IfaceKey, ProbeEvent, Topology, Verdict
from vethtrace.topology.query import owners_of_ip

if TYPE_CHECKING:
    from vethtrace.render.ping import PingReport

TICK_S = 0.01
MAX_SNIFFED = 32


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


def l2_reach(topo: Topology, start: IfaceKey, limit: int = MAX_SNIFFED) -> list[IfaceKey]:
    """Interfaces a frame leaving `start` can cross without routing: veth peers,
    bridge/bond masters and their ports, lower devices, transitively (breadth
    first, so the nearest are sniffed when the bound cuts the walk short).

    Why not topology.query.l2_domain: that one answers "which stacks share this
    broadcast domain" for check and watch — bridges only, loopback included,
    unbounded, members sorted by key. Ping needs "where could our frame be
    seen": bonds and macvlan/vlan lower devices carry the frame even if no
    bridge is involved, loopback never does, and the walk order matters
    because at most MAX_SNIFFED sniffers open (nearest first). Widening the
    topology walk would change check's and watch's answers, so both stay."""
    seen: list[IfaceKey] = []
    todo = [start]
    while todo and len(seen) < limit:
        key = todo.pop(0)
        if key in seen:
            continue
        it = topo.iface(key)
        if it is None or it.kind == "loopback":
            continue
        seen.append(key)
        nxt: list[IfaceKey] = []
        if it.peer is not None:
            nxt.append(it.peer)
        if it.master is not None:
            nxt.append(IfaceKey(key.netns, it.master))
        if it.link is not None:  # macvlan/ipvlan/vlan: frames leave through the lower device
            nxt.append(it.link)
        ns = topo.netns(key.netns)
        if ns is not None and it.kind in ("bridge", "bond"):
            nxt += [p.key for p in ns.interfaces if p.master == key.ifindex]
        todo += [k for k in nxt if k not in seen]
    return seen


def make_plan(
    source: str,
    target_netns: str,
    ip: str,
    topo: Topology,
    route: dict[str, Any],
    count: int,
    timeout: float,
) -> tuple[PingPlan, list[str]]:
    """Work out what should happen, and warnings for the user."""
    warnings: list[str] = []
    src_inode = netns.inode_of(source)
    tgt_inode = netns.inode_of(target_netns)
    plan = PingPlan(
        source=_name_in(topo, src_inode, source),
        source_inode=src_inode,
        target_netns=_name_in(topo, tgt_inode, target_netns),
        target_inode=tgt_inode,
        ip=ip,
        count=count,
        timeout=timeout,
    )
    # one entry per interface even if it holds ip twice (same address, two prefix lengths)
    owners = list(dict.fromkeys((ns.name, it.key, it.name) for ns, it in owners_of_ip(topo, ip)))
    plan.owners = [f"{n}/{i}" for n, _k, i in owners]
    in_target = [k for _n, k, _i in owners if k.netns == tgt_inode]
    if in_target:
        plan.target_iface = in_target[0]
    elif owners:
        warnings.append(f"{ip} is not in {plan.target_netns}: it lives on {', '.join(plan.owners)}")
    else:
        warnings.append(f"no interface in any namespace holds {ip} (nothing can answer)")
    if "error" in route:
        plan.route_error = str(route["error"])
        return plan, warnings
    if route.get("type") == "local" or route.get("dev") == "lo":
        warnings.append(f"{ip} is a local address of {plan.source}: the ping never leaves it")
    plan.gateway = route.get("gateway")
    plan.src_addr = route.get("prefsrc")
    src_ns = topo.netns(src_inode)
    dev = src_ns.iface_by_name(route.get("dev", "")) if src_ns else None
    if dev is not None:
        plan.egress, plan.egress_name = dev.key, dev.name
        path = l2_reach(topo, dev.key)
        if plan.target_iface is not None and plan.target_iface not in path:
            path += l2_reach(topo, plan.target_iface, limit=MAX_SNIFFED - len(path))
        plan.path = path
    return plan, warnings


def _name_in(topo: Topology, inode: int, fallback: str) -> str:
    ns = topo.netns(inode)
    return ns.name if ns else fallback


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
    plan_desc: Any = None

    def report(self) -> PingReport:
        from vethtrace.render.ping import PingReport

        return PingReport(
            self.plan, self.verdict, self.events, self.topo, self.findings,
            self.warnings, self.notes, self.timings,
        )  # fmt: skip

    @property
    def relevant(self) -> set[int]:
        """Namespaces on the path: kernel events elsewhere are someone else's traffic."""
        p = self.plan
        return {p.source_inode, p.target_inode} | {k.netns for k in p.path}


def discover_topology(source: str, target: str, rounds: int = 4) -> Topology:
    """The namespaces a ping between source and target can cross, not the whole host.

    Reading every namespace costs time proportional to the machine (hundreds of
    containers), so start from the two ends and follow veth cables outwards:
    each round adds the namespaces the previous one connects to (discover adds
    peers' namespaces as partial ones; reading those in full reveals their
    bridges' other ports and where those lead)."""
    from vethtrace.topology import discover

    selection = {source, target}
    topo = discover(sorted(selection))
    for _ in range(rounds):
        more = {ns.name for ns in topo.namespaces} - selection
        if not more:
            break
        selection |= more
        topo = discover(sorted(selection))
    return topo


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
    its own."""
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ping-setup")
    coll: Any = None
    sniffers: SnifferSet | None = None
    pinger: Pinger | None = None
    watch: NeighWatch | None = None
    kernel_f: Future[tuple[Any, str | None]] | None = None
    try:
        if collector is None:
            kernel_f = pool.submit(_start_kernel, "arp or icmp", None)
        else:
            collector.drain()  # what happened before this ping is not its evidence
        pool.submit(load_scapy)  # ~0.4 s of imports, off the critical path
        route_f = pool.submit(route_get, source, ip)
        topo = discover_topology(source, target_netns)
        timings["topology"] = time.monotonic() - t0
        plan, warnings = make_plan(source, target_netns, ip, topo, route_f.result(), count, timeout)
        plan.size = size
        run = Run(plan=plan, topo=topo, warnings=warnings)
        path_names = sorted({_name_in(topo, k.netns, "") for k in plan.path} - {""})
        findings_f = pool.submit(static_findings, topo, path_names or [plan.source])
        events: queue.Queue[ProbeEvent] = queue.Queue()
        if plan.route_error is None:
            targets = [_target(topo, k) for k in plan.path]
            sniffers = SnifferSet([t for t in targets if t is not None])
            sniffers.start()
            timings["sniffers"] = time.monotonic() - t0
            src_ns = topo.netns(plan.source_inode)
            names = {i.key.ifindex: i.name for i in src_ns.interfaces} if src_ns else {}
            watch = NeighWatch(source, plan.source_inode, plan.nexthop, names, events.put)
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
        if pinger is not None:
            pinger.stop()
            pinger = None
        if watch is not None:
            watch.stop()
            watch = None
        if sniffers is not None:
            rest = sniffers.stop()
            run.frames += rest
            run.events += [f.event for f in rest]
            run.notes += sniffers.failed
            sniffers = None
        _collect(run, events, coll, None)
        if coll is not None:
            run.lost = int(getattr(coll, "lost", 0) or 0)
            run.plan_desc = _describe(coll)
            if coll is not collector:
                coll.close()
            coll = None
        run.findings, why = findings_f.result()
        if why:
            run.notes.append(why)
        run.events.sort(key=lambda e: e.ts_ns)
        run.verdict = decide(plan, run.events, topo, run.findings, final=True)
        timings.setdefault("verdict", time.monotonic() - t0)
        timings["total"] = time.monotonic() - t0
        run.timings = timings
        return run
    finally:
        # also on Ctrl-C and errors: nothing may stay attached, open or running
        for stopper in (pinger, watch, sniffers):
            if stopper is not None:
                with contextlib.suppress(Exception):
                    stopper.stop()
        if coll is not None and coll is not collector:
            with contextlib.suppress(Exception):
                coll.close()
        elif coll is None and kernel_f is not None:
            kernel_f.add_done_callback(_close_late)
        pool.shutdown(wait=False, cancel_futures=True)


def _close_late(f: Future[tuple[Any, str | None]]) -> None:
    """A collector that finished attaching after we gave up is closed at once."""
    with contextlib.suppress(Exception):
        coll, _why = f.result()
        if coll is not None:
            coll.close()


def _describe(coll: Any) -> Any:
    """The probe plan as JSON-able data for the recording header."""
    import dataclasses

    from vethtrace.model import to_dict

    plan = getattr(coll, "plan", None)
    if plan is None:
        return None
    return to_dict(plan) if dataclasses.is_dataclass(plan) else str(plan)


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
    json: bool = False,
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
        _record(write, pcap, r)
    from vethtrace.render import ping as render

    for w in r.warnings:
        print(f"vethtrace ping: warning: {w}", file=sys.stderr)
    report = r.report()
    if json:
        print(_json_dumps(render.to_json(report)))
    else:
        from vethtrace.console import make_console

        report.warnings = ()  # already on stderr
        render.show(make_console(), report)
    assert r.verdict is not None
    return int(ExitStatus.OK if r.verdict.reachable else ExitStatus.FINDINGS)


def _json_dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2)


def _record(path: str, pcap: str | None, r: Run) -> None:
    from vethtrace.record import Recorder

    header_ping = {
        "source": r.plan.source,
        "target_netns": r.plan.target_netns,
        "ip": r.plan.ip,
        "count": r.plan.count,
        "timeout": r.plan.timeout,
        "size": r.plan.size,
        "plan": _plan_dict(r.plan),
        "warnings": r.warnings,
        "notes": r.notes,
        "timings": r.timings,
    }
    with Recorder(path, command=sys.argv, plan=r.plan_desc, pcap=pcap, ping=header_ping) as rec:
        rec.topology(r.topo)
        for ev in sorted(r.events, key=lambda e: e.ts_ns):
            rec.event(ev)
        for f in r.findings:
            rec.finding(f)
        if r.verdict is not None:
            rec.verdict(r.verdict)
        rec.close(lost=r.lost)


def _plan_dict(plan: PingPlan) -> dict[str, Any]:
    from vethtrace.model import to_dict

    out: dict[str, Any] = to_dict(plan)
    return out
