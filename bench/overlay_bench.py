"""Does tracing cost more for VXLAN-encapsulated traffic than for plain bridged
traffic, when the filter matches none of it (#19: "non-matching inner traffic
costs no more than non-matching plain traffic")?

Two labs side by side: `bridge-two` (two namespaces on a bridge: the plain
path) and `overlay-vxlan` (pod -> veth -> cni0 -> vxlan0 -> the underlay
bridge -> the other node -> vxlan0 -> cni0 -> pod: the overlay path). Each
lab's first stated ping gives the client namespace, the server namespace and
the address. iperf3 sends UDP 64-byte datagrams client -> server (client and
server pinned to one CPU each), under two conditions: untraced, and vethtrace
with a filter matching none of it (`host 203.0.113.77`: the probes decode
the outer headers and, for the overlay, the inner ones too, then give up).
Runs alternate (plain-untraced, plain-vethtrace, overlay-untraced,
overlay-vethtrace, ...) so machine noise hits all alike; medians per cell.

Three measures per cell:
- kpkt/s sent, unthrottled (what the sender achieves, the path's cost included:
  veth delivers synchronously, the receive softirqs run in the sender's context);
- client CPU ns per packet at a fixed rate (--cpu-pps), the whole path's cost
  per packet without the throughput noise;
- vethtrace's BPF programs (BPF_ENABLE_STATS, as trace_bench's cost part):
  program runs per packet and ns per run. The overlay path crosses more devices
  (more tracepoints fire per packet), so the question "does an encapsulated
  packet cost more" is answered by ns per *run*; ratios per packet are shown
  next to it.

    flock /tmp/vethtrace-bench.lock .venv/bin/python bench/overlay_bench.py [--seconds 3] [--reps 3]

Writes markdown on stdout, each run's value on stderr. Needs root and iperf3.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import trace_bench as tb  # noqa: E402  (the tracer, the BPF stats, the consumer)

LABS = {"plain": "bridge-two", "overlay": "overlay-vxlan"}
KINDS = ("untraced", "vethtrace-nonmatch")


def iperf_json(src: str, ip: str, seconds: int, pps: int | None = None) -> dict:
    rate = str(pps * 64 * 8) if pps else "0"
    args = ["ip", "netns", "exec", src, "taskset", "-c", tb.CLIENT_CPU, "iperf3", "-c", ip,
            "-t", str(seconds), "-J", "-u", "-l", "64", "-b", rate]  # fmt: skip
    data: dict = json.loads(tb.sh(*args, timeout=seconds + 30).stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3 {src} -> {ip}: {data['error']}")
    return data


def kpps(data: dict) -> float:
    s = data["end"]["sum"]
    return s["packets"] / s["seconds"] / 1e3


def cpu_ns(data: dict) -> float:
    s = data["end"]["sum"]
    cpu = data["end"]["cpu_utilization_percent"]["host_total"] / 100 * s["seconds"]
    return cpu / s["packets"] * 1e9


class Lab:
    """A built lab, its iperf3 server and the flow its first stated ping names."""

    def __init__(self, scenario: str, prefix: str) -> None:
        from vethtrace.lab import up

        self.scenario, self.prefix = scenario, prefix
        self.lab = up(scenario, prefix)
        p = next(p for p in self.lab.scenario.expect.pings if p.ok and p.source != p.netns)
        self.src, self.dst, self.ip = self.lab.ns(p.source), self.lab.ns(p.netns), p.to
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.dst, "taskset", "-c", tb.SERVER_CPU, "iperf3", "-s"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)
        tb.sh("ip", "netns", "exec", self.src, "ping", "-c2", "-W1", self.ip)  # ARP, FDB warm

    def close(self) -> None:
        from vethtrace.lab import down

        self.server.terminate()
        self.server.wait()
        down(self.scenario, self.prefix)


def one(lab: Lab, kind: str, seconds: int, cpu_pps: int) -> dict[str, float]:
    """One run of a condition: unthrottled kpps, CPU ns/packet at a fixed rate, and
    (traced) the BPF programs' runs per packet and ns per run over the fixed-rate flow."""
    tracer = tb.Tracer(kind, {"a": lab.src}, "udp")
    tracer.start()
    out: dict[str, float] = {}
    try:
        out["kpps"] = kpps(iperf_json(lab.src, lab.ip, seconds))
        pid = tracer.proc.pid if tracer.proc is not None else None
        t0, c0 = tb.prog_stats(pid) if pid else (0, 0)
        time.sleep(1.0)  # the background rate (other traffic on this shared machine)
        t1, c1 = tb.prog_stats(pid) if pid else (0, 0)
        start = time.monotonic()
        data = iperf_json(lab.src, lab.ip, seconds, cpu_pps)
        flow_s = time.monotonic() - start
        t2, c2 = tb.prog_stats(pid) if pid else (0, 0)
        out["cpu_ns"] = cpu_ns(data)
        if pid:
            packets = data["end"]["sum"]["packets"]
            runs = max(1.0, (c2 - c1) - (c1 - c0) * flow_s)
            ns = max(0.0, (t2 - t1) - (t1 - t0) * flow_s)
            out["runs_pkt"], out["ns_run"] = runs / packets, ns / runs
            out["ns_pkt"] = ns / packets
    finally:
        tracer.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cpu-pps", type=int, default=20000, help="UDP packets/s for CPU and BPF")
    args = ap.parse_args()  # (tb.Tracer runs trace_bench.py itself as the consumer)
    fd = tb.enable_bpf_stats()
    base = f"vtob{os.getpid() % 10000}"
    labs: dict[str, Lab] = {}
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    load0 = os.getloadavg()
    try:
        for path, scenario in LABS.items():
            labs[path] = Lab(scenario, f"{base}{path[0]}-")
        for _rep in range(args.reps):
            for path, lab in labs.items():
                for kind in KINDS:
                    r = one(lab, kind, args.seconds, args.cpu_pps)
                    runs.setdefault((path, kind), []).append(r)
                    print(f"# {path} {kind}: {r}", file=sys.stderr)
    finally:
        for lab in labs.values():
            lab.close()
        os.close(fd)
    load1 = os.getloadavg()
    report(args, runs, load0, load1)
    return 0


def _med(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(args: argparse.Namespace, runs: dict, load0: tuple, load1: tuple) -> None:
    cmd = " ".join(sys.argv[1:])
    print(f"`flock /tmp/vethtrace-bench.lock .venv/bin/python bench/overlay_bench.py {cmd}` — "
          f"{time.strftime('%Y-%m-%d %H:%M')}, kernel {os.uname().release}, {os.cpu_count()} "
          f"CPUs, load average {load0[0]:.2f} before, {load1[0]:.2f} after; {args.reps} reps "
          f"of {args.seconds} s per cell, medians\n")  # fmt: skip
    print("| path | condition | UDP-64B kpkt/s sent | ratio | client CPU ns/pkt at "
          f"{args.cpu_pps // 1000}k pps | ratio | BPF runs/pkt | BPF ns/run | BPF ns/pkt |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    ratios = {}
    for path in LABS:
        base = runs[(path, "untraced")]
        for kind in KINDS:
            rs = runs[(path, kind)]
            k, c = _med(rs, "kpps"), _med(rs, "cpu_ns")
            rk, rc = k / _med(base, "kpps"), c / _med(base, "cpu_ns")
            ratios[(path, kind)] = (rk, rc)
            bpf = ("| " + " | ".join(f"{_med(rs, x):.{d}f}" for x, d in
                                     (("runs_pkt", 1), ("ns_run", 0), ("ns_pkt", 0)))
                   if "ns_run" in rs[0] else "| – | – | –")  # fmt: skip
            print(f"| {path} | {kind} | {k:.1f} | {rk:.2f} | {c:.0f} | {rc:.2f} {bpf} |")
    (pk, pc), (ok, oc) = ratios[("plain", KINDS[1])], ratios[("overlay", KINDS[1])]
    per_run = {p: _med(runs[(p, KINDS[1])], "ns_run") for p in LABS}
    per_pkt = {p: _med(runs[(p, KINDS[1])], "runs_pkt") for p in LABS}
    print(f"\nThroughput kept with a non-matching filter: plain {pk:.2f}, overlay {ok:.2f}; "
          f"CPU per packet: plain ×{pc:.2f}, overlay ×{oc:.2f}. BPF ns per program run, "
          f"overlay / plain: {per_run['overlay'] / per_run['plain']:.2f} (what decoding the "
          f"inner frame adds per hook hit); program runs per packet, overlay / plain: "
          f"{per_pkt['overlay'] / per_pkt['plain']:.1f} (the devices the path crosses)."
          )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
