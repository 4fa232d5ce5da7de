"""Cost of tracing, side by side in one run: iperf3 TCP and UDP (64-byte) between
two namespaces on a bridge (the `bridge-two` lab), under

  untraced | vethtrace, filter matching none of the flow | bpftrace counting on
  3 tracepoints | tcpdump on br0 | vethtrace, filter matching the flow

Conditions alternate (ABCDE ABCDE ...) so machine noise hits all alike; the
table reports medians and the ratio to untraced. The matching run also reports
events decoded per second in Python (ProbeEvent objects) and events lost.
Then start-to-attached: time from spawning each tracer to its first event for
a sentinel ping (vethtrace, all probe areas; bpftrace, 3 tracepoints).

    sudo .venv/bin/python bench/trace_bench.py [--seconds 5] [--reps 2]

Writes the markdown table on stdout. Needs root, iperf3, bpftrace, tcpdump.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PY = str(Path(sys.executable))
VETHTRACE = str(Path(sys.executable).parent / "vethtrace")
SERVER_IP = "10.0.0.2"
NONMATCH = "host 203.0.113.77"
BPFTRACE_COUNT = (
    "tracepoint:net:net_dev_queue, tracepoint:net:netif_receive_skb, "
    "tracepoint:skb:consume_skb { @n = count(); } interval:ms:200 { print(@n); }"
)


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


def iperf(a: str, proto: str, seconds: int, pps: int | None = None) -> float:
    """Client in a -> server in b. TCP: Gbit/s received. UDP, 64-byte payloads
    unthrottled: kpackets/s *sent* (the receiver's socket drops most of them,
    so its count measures the socket buffer, not the path's cost)."""
    args = ["ip", "netns", "exec", a, "iperf3", "-c", SERVER_IP, "-t", str(seconds), "-J"]
    if proto == "udp":
        args += ["-u", "-l", "64", "-b", str(pps * 64 * 8) if pps else "0"]
    res = sh(*args, timeout=seconds + 30)
    data = json.loads(res.stdout)
    if proto == "tcp":
        return data["end"]["sum_received"]["bits_per_second"] / 1e9
    s = data["end"]["sum"]
    return s["packets"] / s["seconds"] / 1e3


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
            flt = NONMATCH if self.kind == "vethtrace-nonmatch" else f"{self.proto} port 5201"
            self.proc = subprocess.Popen(
                [PY, __file__, "--consumer", flt],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
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
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    attr = ctypes.create_string_buffer(b"\0" * 128, 128)  # enable_stats.type = 0 (RUN_TIME)
    fd = libc.syscall(321, 32, attr, 128)  # SYS_bpf, BPF_ENABLE_STATS
    if fd < 0:
        raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS")
    return int(fd)


def prog_stats(pid: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over the BPF programs process `pid` holds."""
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
    return sum(t for t, _ in seen.values()), sum(c for _, c in seen.values())


def cost_per_hit(kind: str, lab: dict[str, str], seconds: int, pps: int) -> tuple[float, float]:
    """(ns per program run, runs per second) of a tracer's BPF programs during a
    UDP flow at a fixed rate: the in-kernel cost, free of throughput noise."""
    tracer = Tracer(kind, lab, "udp")
    tracer.start()
    assert tracer.proc is not None
    pid = tracer.proc.pid
    try:
        t0, c0 = prog_stats(pid)
        iperf(lab["a"], "udp", seconds, pps)
        t1, c1 = prog_stats(pid)
    finally:
        tracer.stop()
    runs = c1 - c0
    return (t1 - t0) / max(1, runs), runs / seconds


def attach_time(kind: str, a: str) -> float:
    """Spawn -> first event for a sentinel ping from a (pings every 50 ms)."""
    if kind == "vethtrace":
        cmd = [VETHTRACE, "trace", "icmp", "-n", a, "--json"]
    else:
        cmd = [
            "bpftrace",
            "-e",
            "tracepoint:net:net_dev_queue, tracepoint:net:netif_receive_skb, "
            'tracepoint:skb:consume_skb /comm == "ping"/ { printf("event\\n"); exit(); }',
        ]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", a, "ping", "-q", "-i", "0.05", "-W", "1", SERVER_IP],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        while True:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{kind} exited without an event")
            if line.startswith("{") or "event" in line:
                return time.monotonic() - t0
    finally:
        pinger.terminate()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--consumer", metavar="FILTER")
    ap.add_argument("--cost-only", action="store_true", help="only the in-kernel cost table")
    ap.add_argument(
        "--rates",
        type=int,
        nargs="*",
        default=[5000, 10000, 15000, 20000, 30000],
        help="UDP packets/s for the lossless-capacity runs",
    )
    ap.add_argument("-n", action="append", default=[])
    args = ap.parse_args()
    if args.consumer is not None:
        consumer(args.consumer, args.n)
        return 0
    from vethtrace.lab import down, up

    prefix = f"vtbench{os.getpid() % 10000}-"
    lab = up("bridge-two", prefix)
    names = {n: lab.ns(n) for n in ("sw", "a", "b")}
    server = subprocess.Popen(
        ["ip", "netns", "exec", names["b"], "iperf3", "-s"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    kinds = ["untraced", "vethtrace-nonmatch", "bpftrace", "tcpdump", "vethtrace-match"]
    results: dict[tuple[str, str], list[float]] = {}
    extra: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        if args.cost_only:
            stats_fd = enable_bpf_stats()
            try:
                for k in ("vethtrace-nonmatch", "bpftrace", "vethtrace-match"):
                    ns, rate = cost_per_hit(k, names, args.seconds, 10000)
                    print(f"| {k} | {ns:.0f} | {rate / 1e3:.0f} k |")
            finally:
                os.close(stats_fd)
            return 0
        for proto in ("tcp", "udp"):
            for _rep in range(args.reps):
                for kind in kinds:
                    tracer = Tracer(kind, names, proto)
                    tracer.start()
                    try:
                        value = iperf(names["a"], proto, args.seconds)
                    finally:
                        tracer.stop()
                    results.setdefault((proto, kind), []).append(value)
                    if tracer.stats:
                        extra.setdefault((proto, kind), []).append(tracer.stats)
                    print(f"# {proto} {kind}: {value:.3f} {tracer.stats or ''}", file=sys.stderr)
        capacity = []
        for pps in args.rates:
            tracer = Tracer("vethtrace-match", names, "udp")
            tracer.start()
            try:
                sent = iperf(names["a"], "udp", args.seconds, pps)
            finally:
                tracer.stop()
            st = tracer.stats
            capacity.append((pps, sent, st["events"] / st["seconds"] / 1e3, st["lost"]))
            print(f"# capacity {pps} pps: {capacity[-1]}", file=sys.stderr)
        stats_fd = enable_bpf_stats()
        try:
            cost = {
                k: cost_per_hit(k, names, args.seconds, 10000)
                for k in ("vethtrace-nonmatch", "bpftrace", "vethtrace-match")
            }
        finally:
            os.close(stats_fd)
        for k, (ns, rate) in cost.items():
            print(f"# cost {k}: {ns:.0f} ns/run, {rate / 1e3:.0f} k runs/s", file=sys.stderr)
        attach = {
            k: [attach_time(k, names["a"]) for _ in range(3)] for k in ("vethtrace", "bpftrace")
        }
    finally:
        server.terminate()
        server.wait()
        down("bridge-two", prefix)
    print(
        f"`sudo .venv/bin/python bench/trace_bench.py --seconds {args.seconds} --reps {args.reps}`"
        f" — {time.strftime('%Y-%m-%d')}, kernel {os.uname().release}, {os.cpu_count()} CPUs\n"
    )
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
    print("\n| UDP 64 B flow, kpkt/s sent | events/s decoded in Python | events lost |")
    print("|---|---|---|")
    for _pps, sent, evs, lost in capacity:
        print(f"| {sent:.1f} | {evs:.0f} k/s | {lost:.0f} |")
    print("\n| in-kernel cost, UDP 64 B at 10 kpkt/s | ns per BPF program run | runs/s |")
    print("|---|---|---|")
    for k, (ns, rate) in cost.items():
        print(f"| {k} | {ns:.0f} | {rate / 1e3:.0f} k |")
    print("\n| tracer | start -> first event, 1st run | 2nd | 3rd |")
    print("|---|---|---|---|")
    for k, times in attach.items():
        print(f"| {k} | " + " | ".join(f"{t:.2f} s" for t in times) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
