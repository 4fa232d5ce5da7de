"""Cost of tracing, side by side in one run: iperf3 TCP and UDP (64-byte) between
two namespaces on a bridge (the `bridge-two` lab), under

  untraced | floor: empty raw-tracepoint programs (return 0) on the tracepoints
  vethtrace attaches, loaded through our bpf(2) wrapper, the ceiling any
  program on these hooks can reach | vethtrace, filter matching none of the flow | vethtrace scoped
  (-n) to a namespace the flow does not cross | bpftrace counting on the
  same 7 per-packet tracepoints | tcpdump on br0 | vethtrace, filter matching the flow

Conditions alternate (ABCDEF ABCDEF ...) so machine noise hits all alike; the
iperf3 client and server are pinned to one CPU each; the table reports medians
and the ratio to untraced. The matching run also reports events decoded per
second in Python (ProbeEvent objects) and events lost.
Then start-to-attached: time from spawning each tracer to its first event for
a sentinel ping (vethtrace, all probe areas; bpftrace, 3 tracepoints).

The in-kernel cost (`--cost-only`, also part of the full run) is free of
throughput noise: the kernel times every BPF program run (BPF_ENABLE_STATS)
while a UDP flow runs at a fixed rate; per tracer it reports ns per program
run and, what one packet of the flow pays, program runs and ns per packet
(the run time over the flow minus the background rate measured just before,
divided by the packets sent).

    flock /tmp/vethtrace-bench.lock .venv/bin/python bench/trace_bench.py [--seconds 3] [--reps 4]
    flock /tmp/vethtrace-bench.lock .venv/bin/python bench/trace_bench.py --cost-only

Writes the markdown tables on stdout. Needs root, iperf3, bpftrace, tcpdump.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PY = str(Path(sys.executable))
VETHTRACE = str(Path(sys.executable).parent / "vethtrace")
SERVER_IP = "10.0.0.2"
NONMATCH = "host 203.0.113.77"
# bpftrace counting on the same per-packet tracepoints vethtrace attaches to
# (the neighbour and fdb ones do not fire per packet)
SAME_TRACEPOINTS = (
    "net:net_dev_queue", "net:net_dev_start_xmit", "net:net_dev_xmit", "net:netif_rx",
    "net:netif_receive_skb", "skb:kfree_skb", "skb:consume_skb",
)  # fmt: skip
BPFTRACE_COUNT = (
    ", ".join(f"tracepoint:{t}" for t in SAME_TRACEPOINTS)
    + " { @n = count(); } interval:ms:200 { print(@n); }"
)


# --- the floor: empty programs on the same hooks, in their own process ---------------


def probe_tracepoints() -> list[str]:
    """The raw tracepoints vethtrace's probes attach to, read from the probe
    sources themselves (RAW_TRACEPOINT_PROBE(name) in vethtrace/probes/*.c), so
    the floor follows the probe set as it changes."""
    import re

    names: list[str] = []
    for src in sorted((REPO / "vethtrace" / "probes").glob("*.c")):
        names += re.findall(r"^RAW_TRACEPOINT_PROBE\((\w+)\)", src.read_text(), re.M)
    return names


def floor() -> None:
    """Load one empty raw-tracepoint program (r0 = 0; exit) and attach it to each
    of vethtrace's tracepoints, print 'attached', hold them until SIGTERM/SIGINT.
    What a packet then pays is the tracepoints' own cost: the run time of any
    program on these hooks is on top of it."""
    from vethtrace.collect import plan
    from vethtrace.collect import syscall as sc

    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    links: list[int] = []
    skipped: list[str] = []
    for tp in probe_tracepoints():
        fd, err = plan._load_noop(sc.BPF_PROG_TYPE_RAW_TRACEPOINT)
        if fd < 0:
            raise SystemExit(f"floor: empty program load refused: {os.strerror(err)}")
        link, err = plan._raw_tp_open(tp.encode(), fd)
        if link < 0:
            os.close(fd)
            skipped.append(f"{tp} ({os.strerror(err)})")
            continue
        links += [fd, link]  # the program fd stays open too (prog_stats reads it)
    if skipped:
        print(f"# floor: not attached: {', '.join(skipped)}", file=sys.stderr)
    print("attached", flush=True)
    while not stop:
        time.sleep(0.1)
    for fd in links:
        os.close(fd)


# --- the consumer: runs in its own process, like `vethtrace trace` -------------------


def consumer(filter_expr: str, netns: list[str]) -> None:
    """Attach, print 'attached', count decoded events until SIGTERM, print stats JSON."""
    from vethtrace.collect.bpf import BpfCollector
    from vethtrace.netns import inode_of

    inodes = [inode_of(n) for n in netns] or None
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with BpfCollector(filter_expr, inodes) as col:
        col.start()
        print("attached", flush=True)
        n, t0 = 0, time.monotonic()
        while not stop:
            n += len(col.poll(100))
        n += len(col.drain())
        secs = time.monotonic() - t0
        print(json.dumps({"events": n, "seconds": secs, "lost": col.lost}), flush=True)


# --- helpers ----------------------------------------------------------------------


def sh(*cmd: str, **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]


def wait_line(
    proc: subprocess.Popen, word: str, stream: str = "stdout", timeout: float = 30
) -> None:
    pipe = getattr(proc, stream)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = pipe.readline()
        if not line:
            raise RuntimeError(
                f"tracer exited before '{word}': {proc.stderr.read() if proc.stderr else ''}"
            )
        if word in line:
            return
    raise RuntimeError(f"no '{word}' within {timeout}s")


CLIENT_CPU, SERVER_CPU = "0", str(min(1, (os.cpu_count() or 1) - 1))


def iperf_json(a: str, proto: str, seconds: int, pps: int | None = None) -> dict:
    """iperf3's JSON report: client in a (pinned to CPU 0) -> server in b
    (pinned to the last CPU); UDP with 64-byte payloads, at `pps` or unthrottled."""
    args = ["ip", "netns", "exec", a, "taskset", "-c", CLIENT_CPU,
            "iperf3", "-c", SERVER_IP, "-t", str(seconds), "-J"]  # fmt: skip
    if proto == "udp":
        args += ["-u", "-l", "64", "-b", str(pps * 64 * 8) if pps else "0"]
    data: dict = json.loads(sh(*args, timeout=seconds + 30).stdout)
    return data


def iperf(a: str, proto: str, seconds: int, pps: int | None = None) -> float:
    """TCP: Gbit/s received. UDP: kpackets/s *sent* (the receiver's socket drops
    most of them, so its count measures the socket buffer, not the path's cost)."""
    data = iperf_json(a, proto, seconds, pps)
    if proto == "tcp":
        return data["end"]["sum_received"]["bits_per_second"] / 1e9
    s = data["end"]["sum"]
    return s["packets"] / s["seconds"] / 1e3


# vethtrace conditions: filter (None: the flow's own), -n scope (lab namespaces by key)
VETHTRACE_RUNS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "vethtrace-nonmatch": (NONMATCH, ()),
    "vethtrace-otherns": ("", ("other",)),
    "vethtrace-match": (None, ()),
}
# --before DIR: a checkout of another revision (e.g. `git archive main`), whose
# own consumer (its Python and its probes, which go together) runs the
# "... (before)" conditions of the cost part
BEFORE: list[Path] = []
BEFORE_SUFFIX = " (before)"


class Tracer:
    """One traced condition: start() before the flow, stop() after; extra stats."""

    def __init__(self, kind: str, lab: dict[str, str], proto: str) -> None:
        self.kind, self.lab, self.proto = kind, lab, proto
        self.proc: subprocess.Popen | None = None
        self.stats: dict[str, float] = {}

    def start(self) -> None:
        if self.kind == "untraced":
            return
        if self.kind.startswith("vethtrace"):
            base = self.kind.removesuffix(BEFORE_SUFFIX)
            script = BEFORE[0] / "bench" / "trace_bench.py" if base != self.kind else __file__
            flt, scope = VETHTRACE_RUNS[base]
            if flt is None:
                flt = f"{self.proto} port 5201"
            scope_args = [arg for key in scope for arg in ("-n", self.lab[key])]
            self.proc = subprocess.Popen(
                [PY, str(script), "--consumer", flt, *scope_args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            wait_line(self.proc, "attached")
        elif self.kind == "floor":
            self.proc = subprocess.Popen(
                [PY, __file__, "--floor"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            wait_line(self.proc, "attached")
        elif self.kind == "bpftrace":
            self.proc = subprocess.Popen(
                ["bpftrace", "-e", BPFTRACE_COUNT],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            # bpftrace prints "Attaching" before its tracepoints are live: wait
            # until its counter moves with a sentinel ping
            assert self.proc.stdout is not None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                sh("ip", "netns", "exec", self.lab["a"], "ping", "-c1", "-W1", SERVER_IP)
                line = self.proc.stdout.readline()
                if line.startswith("@n:") and int(line.split()[1]) > 0:
                    break
        elif self.kind == "tcpdump":
            self.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.lab["sw"],
                    "tcpdump",
                    "-i",
                    "br0",
                    "-n",
                    "-s",
                    "128",
                    "-w",
                    "/dev/null",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            wait_line(self.proc, "listening", stream="stderr")

    def stop(self) -> None:
        if self.proc is None:
            return
        sig = signal.SIGTERM if self.kind.startswith("vethtrace") else signal.SIGINT
        self.proc.send_signal(sig)
        try:
            out, _err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _err = self.proc.communicate()
            print(f"# {self.kind} did not stop on {sig.name}: killed", file=sys.stderr)
        if self.kind.startswith("vethtrace"):
            self.stats = json.loads(out.strip().splitlines()[-1])


def enable_bpf_stats() -> int:
    """bpf(BPF_ENABLE_STATS, RUN_TIME): the kernel times every BPF program run
    while this fd is open (no sysctl is changed; closing the fd ends it)."""
    from vethtrace.collect import syscall as sc

    return sc.bpf(sc.BPF_ENABLE_STATS, b"")  # type 0: RUN_TIME


def prog_stats(pid: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over the BPF programs process `pid` holds."""
    seen = prog_runs(pid)
    return sum(t for t, _ in seen.values()), sum(c for _, c in seen.values())


def prog_runs(pid: int) -> dict[int, tuple[int, int]]:
    """(run_time_ns, run_cnt) per id of the BPF programs process `pid` holds."""
    seen: dict[int, tuple[int, int]] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            info = dict(
                line.split(":", 1)
                for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
                if ":" in line
            )
        except OSError:
            continue
        seen[int(info["prog_id"])] = (int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0)))
    return seen


def prog_names() -> dict[int, str]:
    """Program id -> hook name. bcc names a program it compiles after the
    tracepoint, cut to 15 characters; one loaded from the probe cache keeps
    bcc's function name (raw_tracepoint__<tp>): both become the first."""
    out = sh("bpftool", "-j", "prog", "show").stdout
    return {p["id"]: p.get("name", "").removeprefix("raw_tracepoint__")[:15]
            for p in json.loads(out or "[]")}  # fmt: skip


def cost_per_packet(kind: str, lab: dict[str, str], seconds: int, pps: int) -> dict[str, float]:
    """A tracer's BPF programs during a UDP flow at a fixed rate: ns per program
    run, and per packet of the flow (program runs and ns), after subtracting
    the background (other traffic on this shared machine, which every tracer
    also sees) measured for 1 s just before the flow."""
    tracer = Tracer(kind, lab, "udp")
    tracer.start()
    assert tracer.proc is not None
    pid = tracer.proc.pid
    try:
        t0, c0 = prog_stats(pid)
        time.sleep(1.0)
        t1, c1 = prog_stats(pid)
        start = time.monotonic()
        kpps = iperf(lab["a"], "udp", seconds, pps)
        t2, c2 = prog_stats(pid)
        flow_s = time.monotonic() - start
    finally:
        tracer.stop()
    packets = kpps * 1e3 * seconds
    runs = c2 - c1
    return {
        "ns_run": (t2 - t1) / max(1, runs),
        "runs_pkt": max(0.0, runs - (c1 - c0) * flow_s) / packets,
        "ns_pkt": max(0.0, (t2 - t1) - (t1 - t0) * flow_s) / packets,
        "bg_runs_s": c1 - c0,
    }


def hook_cost(
    kind: str, lab: dict[str, str], seconds: int, pps: int
) -> dict[str, tuple[float, float]]:
    """cost_per_packet split by hook: {hook: (ns per packet, runs per packet)},
    background subtracted per program. A tail-called program (vt_decide) runs
    inside its caller's run and is counted there, which is what places the
    filter's cost on the hooks that read the skb."""
    tracer = Tracer(kind, lab, "udp")
    tracer.start()
    assert tracer.proc is not None
    pid = tracer.proc.pid
    try:
        names = prog_names()
        r0 = prog_runs(pid)
        time.sleep(1.0)
        r1 = prog_runs(pid)
        start = time.monotonic()
        kpps = iperf(lab["a"], "udp", seconds, pps)
        r2 = prog_runs(pid)
        flow_s = time.monotonic() - start
    finally:
        tracer.stop()
    packets = kpps * 1e3 * seconds
    out: dict[str, tuple[float, float]] = {}
    for i, (t2, c2) in r2.items():
        (t0, c0), (t1, c1) = r0.get(i, (0, 0)), r1.get(i, (0, 0))
        ns = max(0.0, (t2 - t1) - (t1 - t0) * flow_s) / packets
        runs = max(0.0, (c2 - c1) - (c1 - c0) * flow_s) / packets
        if runs >= 0.05:
            out[names.get(i, str(i))] = (ns, runs)
    return out


def hooks_table(lab: dict[str, str], seconds: int, pps: int, reps: int) -> dict[str, dict]:
    """vethtrace-nonmatch by hook, medians over `reps` (alternating with
    --before's probes when given): where a non-matching packet's ns go."""
    kinds = ["vethtrace-nonmatch"] + (["vethtrace-nonmatch" + BEFORE_SUFFIX] if BEFORE else [])
    runs: dict[str, list[dict[str, tuple[float, float]]]] = {k: [] for k in kinds}
    stats_fd = enable_bpf_stats()
    try:
        for _ in range(reps):
            for k in kinds:
                runs[k].append(hook_cost(k, lab, seconds, pps))
                total = sum(ns for ns, _ in runs[k][-1].values())
                print(f"# hooks {k}: {total:.0f} ns/packet {runs[k][-1]}", file=sys.stderr)
    finally:
        os.close(stats_fd)
    table: dict[str, dict] = {}
    for k, rs in runs.items():
        hooks = sorted({h for r in rs for h in r})
        table[k] = {h: (statistics.median(r.get(h, (0.0, 0.0))[0] for r in rs),
                        statistics.median(r.get(h, (0.0, 0.0))[1] for r in rs))
                    for h in hooks}  # fmt: skip
        table[k]["total"] = (statistics.median(sum(ns for ns, _ in r.values()) for r in rs), 0.0)
    return table


def print_hooks(table: dict[str, dict], seconds: int, pps: int, reps: int) -> None:
    kinds = list(table)
    print(f"\n| hook, UDP 64 B at {pps // 1000} kpkt/s, {seconds} s x {reps} | "
          + " | ".join(f"{k}: runs/packet, ns/run, ns/packet" for k in kinds) + " |")  # fmt: skip
    print("|---|" + "---|" * len(kinds))
    hooks = sorted({h for k in kinds for h in table[k] if h != "total"})
    for h in [*hooks, "total"]:
        cells = []
        for k in kinds:
            ns, runs = table[k].get(h, (0.0, 0.0))
            per_run = f"{ns / runs:.0f}" if runs else "-"
            cells.append(f"{runs:.1f}, {per_run}, {ns:.0f}" if h != "total" else f"{ns:.0f}")
        print(f"| {h} | " + " | ".join(cells) + " |")


def client_cpu_per_packet(a: str, seconds: int, pps: int) -> float:
    """CPU ns per packet of the iperf3 client sending UDP 64 B at a fixed rate,
    pinned to one CPU: veth delivers synchronously and the receive softirqs
    run in the sender's context, so this is the whole path, every hook of a
    tracer included (the BPF program and the tracepoint's own work around it,
    which the program run time does not show; classic tracepoints build a
    record, raw ones do not)."""
    data = iperf_json(a, "udp", seconds, pps)
    total = data["end"]["sum"]
    cpu = data["end"]["cpu_utilization_percent"]["host_total"] / 100 * total["seconds"]
    return cpu / total["packets"] * 1e9


KINDS = ("untraced", "floor", "vethtrace-nonmatch", "vethtrace-otherns", "bpftrace", "tcpdump",
         "vethtrace-match")  # fmt: skip


def cpu_table(lab: dict[str, str], seconds: int, pps: int, reps: int) -> dict[str, list[float]]:
    """Client CPU ns per packet per condition, each run, alternating conditions
    (with --before, its no-match conditions too)."""
    kinds = list(KINDS)
    if BEFORE:
        kinds[3:3] = [k + BEFORE_SUFFIX for k in ("vethtrace-nonmatch", "vethtrace-otherns")]
    runs: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(reps):
        for k in kinds:
            tracer = Tracer(k, lab, "udp")
            tracer.start()
            try:
                runs[k].append(client_cpu_per_packet(lab["a"], seconds, pps))
            finally:
                tracer.stop()
            print(f"# cpu {k}: {runs[k][-1]:.0f} ns/packet", file=sys.stderr)
    return runs


def print_cpu(cpu: dict[str, list[float]], seconds: int, pps: int, reps: int) -> None:
    """Other load on the machine only adds CPU time to a run (interrupts and
    cache misses are charged to whoever runs), so the minimum is the estimate
    and the median shows the spread."""
    print(
        f"\n| UDP 64 B at {pps // 1000} kpkt/s, {seconds} s x {reps}, sender pinned "
        "| sender CPU ns per packet, min | median | added by the tracer (min) |"
    )
    print("|---|---|---|---|")
    base = min(cpu["untraced"])
    for k, runs in cpu.items():
        added = "-" if k == "untraced" else f"{min(runs) - base:+.0f}"
        print(f"| {k} | {min(runs):.0f} | {statistics.median(runs):.0f} | {added} |")


COST_KINDS = ("floor", "vethtrace-nonmatch", "vethtrace-otherns", "bpftrace", "vethtrace-match")
COST_HOOKS = {"bpftrace": f"{len(SAME_TRACEPOINTS)} tracepoints",
              "floor": f"{len(probe_tracepoints())} raw tracepoints, empty programs"}  # fmt: skip


def cost_table(lab: dict[str, str], seconds: int, pps: int, reps: int) -> dict[str, dict]:
    """Medians over `reps` alternations of cost_per_packet, with the stats on
    (with --before, its no-match conditions alternate with ours)."""
    kinds = list(COST_KINDS)
    if BEFORE:
        kinds[2:2] = [k + BEFORE_SUFFIX for k in ("vethtrace-nonmatch", "vethtrace-otherns")]
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    stats_fd = enable_bpf_stats()
    try:
        for _ in range(reps):
            for k in kinds:
                runs[k].append(cost_per_packet(k, lab, seconds, pps))
                print(f"# cost {k}: {runs[k][-1]}", file=sys.stderr)
    finally:
        os.close(stats_fd)
    return {k: {f: statistics.median(r[f] for r in rs) for f in rs[0]} for k, rs in runs.items()}


def print_cost(cost: dict[str, dict], seconds: int, pps: int, reps: int) -> None:
    print(
        f"\n| in-kernel cost, UDP 64 B at {pps // 1000} kpkt/s, {seconds} s x {reps} "
        "| ns per program run | program runs per packet | ns per packet |"
    )
    print("|---|---|---|---|")
    for k, c in cost.items():
        name = f"{k} ({COST_HOOKS.get(k, '13 raw tracepoints')})"
        print(f"| {name} | {c['ns_run']:.0f} | {c['runs_pkt']:.1f} | {c['ns_pkt']:.0f} |")


# VETHTRACE_DECIDE_MAP (read by collect/source.py): where the probes remember
# each skb's verdict, or "off" (read and match at every hook, as before)
DECIDE_MAPS = {"off": "none: read and match at every hook", "0": "shared array (direct-mapped)",
               "1": "per-CPU array (direct-mapped)", "2": "hash", "3": "LRU hash"}  # fmt: skip


def map_table(lab: dict[str, str], seconds: int, pps: int, reps: int) -> dict[str, dict]:
    """vethtrace with a non-matching filter per verdict memory, alternating: the
    in-kernel cost (as cost_per_packet) and the sender's CPU per packet."""
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in DECIDE_MAPS}
    stats_fd = enable_bpf_stats()
    try:
        for _ in range(reps):
            for m in DECIDE_MAPS:
                os.environ["VETHTRACE_DECIDE_MAP"] = m
                try:
                    c = cost_per_packet("vethtrace-nonmatch", lab, seconds, pps)
                    tracer = Tracer("vethtrace-nonmatch", lab, "udp")
                    tracer.start()
                    try:
                        c["cpu_pkt"] = client_cpu_per_packet(lab["a"], seconds, pps)
                    finally:
                        tracer.stop()
                finally:
                    del os.environ["VETHTRACE_DECIDE_MAP"]
                runs[m].append(c)
                print(f"# map {m}: {c}", file=sys.stderr)
        for _ in range(reps):
            runs.setdefault("untraced", []).append(
                {"cpu_pkt": client_cpu_per_packet(lab["a"], seconds, pps)}
            )
    finally:
        os.close(stats_fd)
    return {m: {f: statistics.median(r[f] for r in rs) for f in rs[0]} for m, rs in runs.items()}


def print_maps(maps: dict[str, dict], seconds: int, pps: int, reps: int) -> None:
    print(
        f"\n| verdict memory, filter matching none, UDP 64 B at {pps // 1000} kpkt/s, "
        f"{seconds} s x {reps} | ns per program run | program runs per packet "
        "| ns per packet | sender CPU ns per packet (median) |"
    )
    print("|---|---|---|---|---|")
    for m, c in maps.items():
        name = DECIDE_MAPS.get(m, m)
        if "ns_run" not in c:
            print(f"| {name} | - | - | - | {c['cpu_pkt']:.0f} |")
            continue
        print(f"| {name} | {c['ns_run']:.0f} | {c['runs_pkt']:.1f} | {c['ns_pkt']:.0f} "
              f"| {c['cpu_pkt']:.0f} |")  # fmt: skip


def header(invocation: str = "flock /tmp/vethtrace-bench.lock .venv/bin/python") -> str:
    """The line above a run's tables: the command as typed (this script and its
    arguments after `invocation`), when, which kernel, how loaded (bench/startup.py
    uses it too)."""
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    script = Path(sys.argv[0]).resolve().relative_to(REPO)
    cmd = " ".join(a for a in sys.argv[1:] if a)
    return (
        f"`{invocation} {script} {cmd}`"
        f" — {time.strftime('%Y-%m-%d %H:%M')}, kernel {os.uname().release}, "
        f"{os.cpu_count()} CPUs, load average at the end {load}\n"
    )


def _stamp_lines(proc: subprocess.Popen, t0: float, marks: dict[str, float]) -> None:
    """Record when vethtrace says its probes are attached (stderr: the
    "tracing…" line `trace` prints right after attaching) and its first event
    (stdout: the first JSON line), relative to t0 (the spawn)."""

    def pump(pipe: Any, key: str, test: Any) -> None:
        for line in pipe:
            if key not in marks and test(line):
                marks[key] = time.monotonic() - t0
        pipe.close()

    threading.Thread(target=pump, args=(proc.stderr, "attached", lambda ln: "tracing" in ln),
                     daemon=True).start()  # fmt: skip
    threading.Thread(target=pump, args=(proc.stdout, "event", lambda ln: ln.startswith("{")),
                     daemon=True).start()  # fmt: skip


def vethtrace_cmd(before: bool) -> list[str]:
    """The CLI of this checkout, or of --before's (its own code on sys.path first)."""
    if not before:
        return [VETHTRACE]
    code = (f"import sys; sys.path.insert(0, {str(BEFORE[0])!r}); "
            "from vethtrace.cli import main; sys.exit(main())")  # fmt: skip
    return [PY, "-c", code]


def attach_time(
    kind: str, a: str, cache: str, args: list[str] | None = None, before: bool = False
) -> tuple[float, float]:
    """(spawn -> attached, spawn -> first event) for a sentinel ping from a
    (pings every 50 ms); bpftrace: (nan, first event). vethtrace keeps compiled
    probes and BTF facts in `cache` (VETHTRACE_CACHE)."""
    env = {**os.environ, "VETHTRACE_CACHE": cache}
    if kind == "vethtrace":
        cmd = [*vethtrace_cmd(before), "trace", *(args or ["icmp", "-n", a]), "--json"]
    else:
        cmd = [
            "bpftrace",
            "-e",
            "tracepoint:net:net_dev_queue, tracepoint:net:netif_receive_skb, "
            'tracepoint:skb:consume_skb /comm == "ping"/ { printf("{event\\n"); exit(); }',
        ]
    marks: dict[str, float] = {}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    _stamp_lines(proc, t0, marks)
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", a, "ping", "-q", "-i", "0.05", "-W", "1", SERVER_IP],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while "event" not in marks:
            if proc.poll() is not None and "event" not in marks:
                time.sleep(0.2)
                if "event" not in marks:
                    raise RuntimeError(f"{kind} exited without an event")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind}: no event within 60 s")
            time.sleep(0.005)
        if kind == "vethtrace":  # the stderr reader may lag the stdout one
            wait_until = time.monotonic() + 2
            while "attached" not in marks and time.monotonic() < wait_until:
                time.sleep(0.005)
        return marks.get("attached", float("nan")), marks["event"]
    finally:
        pinger.terminate()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def attach_table(names: dict[str, str], reps: int) -> dict[str, list[list[tuple[float, float]]]]:
    """Per tracer, per condition, `reps` alternations of (attached, first event):
    cold cache (compiles); after `doctor --prepare` on an empty cache, what
    set-up leaves (a filter and scope that were never compiled); the same with
    another filter and scope; that one again. With --before, its CLI alike,
    except that it has no --prepare (its first run compiles)."""
    a = names["a"]
    runs = [
        ["icmp", "-n", a],
        ["icmp and host 10.0.0.2", "-n", a, "-n", names["b"]],
        ["icmp and host 10.0.0.2", "-n", a, "-n", names["b"]],
    ]
    tracers = ["vethtrace"] + (["vethtrace (before)"] if BEFORE else []) + ["bpftrace"]
    out: dict[str, list[list[tuple[float, float]]]] = {t: [[] for _ in range(4)] for t in tracers}
    for _ in range(reps):
        for t in tracers:
            before = t.endswith(BEFORE_SUFFIX)
            kind = t.removesuffix(BEFORE_SUFFIX)
            with tempfile.TemporaryDirectory(prefix="vethtrace-cache-") as cold:
                out[t][0].append(attach_time(kind, a, cold, runs[0], before))
            with tempfile.TemporaryDirectory(prefix="vethtrace-cache-") as cache:
                if kind == "vethtrace" and not before:
                    sh(*vethtrace_cmd(False), "doctor", "--prepare",
                       env={**os.environ, "VETHTRACE_CACHE": cache})  # fmt: skip
                elif kind == "vethtrace":  # before: no --prepare; its first run compiles
                    attach_time(kind, a, cache, ["icmp", "-n", names["b"]], before)
                for i, args in enumerate(runs):
                    out[t][i + 1].append(attach_time(kind, a, cache, args, before))
            print(f"# attach {t}: {[c[-1] for c in out[t]]}", file=sys.stderr)
    return out


def print_attach(attach: dict[str, list[list[tuple[float, float]]]], reps: int) -> None:
    print(
        f"\n| tracer, median of {reps} | cold cache (compiles) | first run after set-up "
        "(`doctor --prepare`), a new filter and scope | another filter and scope | "
        "that one again |"
    )
    print("|---|---|---|---|---|")

    def cell(xs: list[tuple[float, float]]) -> str:
        att = statistics.median(x[0] for x in xs)
        ev = statistics.median(x[1] for x in xs)
        return (f"{att:.2f} s / " if att == att else "") + f"{ev:.2f} s"

    for t, conds in attach.items():
        print(f"| {t} | " + " | ".join(cell(c) for c in conds) + " |")
    print("\n(vethtrace: spawn -> probes attached / spawn -> first event; bpftrace: "
          "first event. --before's first column is its every new filter's cost, "
          "its second: after a run with another filter, as set-up cannot prepare it)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--pps", type=int, default=10000, help="UDP packets/s for the BPF cost runs")
    ap.add_argument("--cpu-pps", type=int, default=20000, help="UDP packets/s for the CPU runs")
    ap.add_argument("--consumer", metavar="FILTER")
    ap.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--parts",
        default="throughput,capacity,cost,attach",
        help="comma-separated: throughput, capacity, cost, attach, maps, hooks "
        "(default: all but maps and hooks)",
    )
    ap.add_argument("--cost-only", action="store_true", help="same as --parts cost")
    ap.add_argument(
        "--rates",
        type=int,
        nargs="*",
        default=[10000, 15000, 20000, 25000, 30000],
        help="UDP packets/s for the lossless-capacity runs",
    )
    ap.add_argument("-n", action="append", default=[])
    ap.add_argument("--attach-reps", type=int, default=3, help="alternations of the attach part")
    ap.add_argument("--before", type=Path, metavar="DIR",
                    help="a checkout of another revision: its probes and CLI run beside "
                    "ours in the cost and attach parts (e.g. git archive main | tar -x -C DIR)")
    args = ap.parse_args()
    if args.floor:
        floor()
        return 0
    if args.before:
        BEFORE.append(args.before.resolve())
    print(f"# load average at the start: {os.getloadavg()}", file=sys.stderr)
    if args.consumer is not None:
        consumer(args.consumer, args.n)
        return 0
    from vethtrace.lab import down, up

    prefix = f"vtbench{os.getpid() % 10000}-"
    lab = up("bridge-two", prefix)
    names = {n: lab.ns(n) for n in ("sw", "a", "b")}
    names["other"] = f"{prefix}other"  # a namespace the flow never crosses (-n scope)
    sh("ip", "netns", "add", names["other"])
    server = subprocess.Popen(
        ["ip", "netns", "exec", names["b"], "taskset", "-c", SERVER_CPU, "iperf3", "-s"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    parts = {"cost"} if args.cost_only else set(args.parts.split(","))
    unknown = parts - {"throughput", "capacity", "cost", "attach", "maps", "hooks"}
    if unknown:
        ap.error(f"unknown part(s) {sorted(unknown)}")
    results: dict[tuple[str, str], list[float]] = {}
    extra: dict[tuple[str, str], list[dict[str, float]]] = {}
    capacity: list[tuple[int, float, float, int]] = []
    attach: dict[str, list[list[tuple[float, float]]]] = {}
    try:
        if "throughput" in parts:
            for proto in ("tcp", "udp"):
                for _rep in range(args.reps):
                    for kind in KINDS:
                        tracer = Tracer(kind, names, proto)
                        tracer.start()
                        try:
                            value = iperf(names["a"], proto, args.seconds)
                        finally:
                            tracer.stop()
                        results.setdefault((proto, kind), []).append(value)
                        if tracer.stats:
                            extra.setdefault((proto, kind), []).append(tracer.stats)
                        note = f"# {proto} {kind}: {value:.3f} {tracer.stats or ''}"
                        print(note, file=sys.stderr)
        if "capacity" in parts:
            for pps in args.rates:
                tracer = Tracer("vethtrace-match", names, "udp")
                tracer.start()
                try:
                    sent = iperf(names["a"], "udp", args.seconds, pps)
                finally:
                    tracer.stop()
                st = tracer.stats
                # events happen while the flow runs: per second of flow
                capacity.append((pps, sent, st["events"] / args.seconds / 1e3, int(st["lost"])))
                print(f"# capacity {pps} pps: {capacity[-1]}", file=sys.stderr)
        if "cost" in parts:
            cost = cost_table(names, args.seconds, args.pps, args.reps)
            cpu = cpu_table(names, args.seconds, args.cpu_pps, args.reps)
        if "hooks" in parts:
            hooks = hooks_table(names, args.seconds, args.pps, args.reps)
        if "maps" in parts:
            maps = map_table(names, args.seconds, args.pps, args.reps)
        if "attach" in parts:
            attach = attach_table(names, args.attach_reps)
    finally:
        server.terminate()
        server.wait()
        sh("ip", "netns", "del", names["other"])
        down("bridge-two", prefix)
    print(header())
    if results:
        print_throughput(KINDS, results, extra)
    if capacity:
        print("\n| UDP 64 B flow, kpkt/s sent | events/s decoded in Python | events lost |")
        print("|---|---|---|")
        for _pps, sent, evs, lost in capacity:
            print(f"| {sent:.1f} | {evs:.0f} k/s | {lost:,} |")
    if "cost" in parts:
        print_cost(cost, args.seconds, args.pps, args.reps)
        print_cpu(cpu, args.seconds, args.cpu_pps, args.reps)
    if "hooks" in parts:
        print_hooks(hooks, args.seconds, args.pps, args.reps)
    if "maps" in parts:
        print_maps(maps, args.seconds, args.pps, args.reps)
    if attach:
        print_attach(attach, args.attach_reps)
    return 0


def print_throughput(
    kinds: tuple[str, ...],
    results: dict[tuple[str, str], list[float]],
    extra: dict[tuple[str, str], list[dict[str, float]]],
) -> None:
    print(
        "| condition | TCP Gbit/s | TCP ratio | UDP-64B kpkt/s sent | UDP ratio "
        "| events/s decoded (lost) |"
    )
    print("|---|---|---|---|---|---|")
    base = {p: statistics.median(results[(p, "untraced")]) for p in ("tcp", "udp")}
    for kind in kinds:
        cells = []
        for p in ("tcp", "udp"):
            med = statistics.median(results[(p, kind)])
            cells += [f"{med:.2f}", f"{med / base[p]:.2f}"]
        ev = []
        for p in ("tcp", "udp"):
            runs = extra.get((p, kind), [])
            if runs:
                rate = statistics.median(r["events"] / r["seconds"] / 1e3 for r in runs)
                got = sum(r["events"] for r in runs)
                lost = sum(r["lost"] for r in runs)
                ev.append(f"{p} {rate:.0f} k/s, {lost / max(1, got + lost):.0%} lost")
        print(f"| {kind} | " + " | ".join(cells) + f" | {'; '.join(ev) or '-'} |")


if __name__ == "__main__":
    sys.exit(main())
