"""What `--nftrace` costs a flow it does not trace (#16's goal: >= 0.99).

In one run, on the `bridge-two` lab (a, b on sw's bridge): iperf3 TCP from a
to b under three conditions, alternated (ABC ABC ...) so machine noise hits
all alike, medians reported:

  untraced | `vethtrace trace FILTER -n a -n sw -n b` | the same with --nftrace

FILTER matches none of the flow (`host 203.0.113.77`), so the BPF side costs
the same in both traced conditions and the ratio of their medians is what
--nftrace adds: per namespace, a base chain at prerouting and output (ip and
bridge families) whose one rule compares the packet's addresses and does not
match. The traced conditions wait until tracing is on (and, with --nftrace,
until b holds our table) before the flow starts. Needs root and iperf3.

    flock /tmp/vethtrace-bench.lock .venv/bin/python bench/nftrace_bench.py [--seconds 3] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from trace_bench import SERVER_CPU, iperf  # noqa: E402

VETHTRACE = str(Path(sys.executable).parent / "vethtrace")
NONMATCH = "host 203.0.113.77"
KINDS = ("untraced", "trace", "trace --nftrace")


def tables(ns: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"],
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout


def start(kind: str, names: dict[str, str]) -> subprocess.Popen | None:
    """The tracer of one condition, once it is tracing (None: untraced)."""
    if kind == "untraced":
        return None
    args = [VETHTRACE, "trace", *NONMATCH.split()]
    for key in ("a", "sw", "b"):
        args += ["-n", names[key]]
    if kind.endswith("--nftrace"):
        args.append("--nftrace")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    for line in proc.stderr:  # status lines go to stderr when stdout is not a terminal
        if "tracing…" in line:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("trace did not start")
    else:
        raise RuntimeError(f"trace exited: rc {proc.wait()}")
    while kind.endswith("--nftrace") and "vethtrace_trace" not in tables(names["b"]):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("no nftrace table appeared")
        time.sleep(0.05)
    return proc


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("nftrace_bench.py: needs root", file=sys.stderr)
        return 2
    from vethtrace.lab import down, up

    prefix = f"vtnfb{os.getpid() % 10000}-"
    lab = up("bridge-two", prefix)
    names = {n: lab.ns(n) for n in ("sw", "a", "b")}
    server = subprocess.Popen(
        ["ip", "netns", "exec", names["b"], "taskset", "-c", SERVER_CPU, "iperf3", "-s"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    results: dict[str, list[float]] = {k: [] for k in KINDS}
    try:
        for rep in range(args.reps):
            for kind in KINDS:
                proc = start(kind, names)
                try:
                    gbps = iperf(names["a"], "tcp", args.seconds)
                finally:
                    stop(proc)
                results[kind].append(gbps)
                print(f"# rep {rep + 1} {kind}: {gbps:.3f} Gbit/s", file=sys.stderr)
    finally:
        server.terminate()
        server.wait()
        down("bridge-two", prefix)
    med = {k: statistics.median(v) for k, v in results.items()}
    load = os.getloadavg()[0]
    print(f"`{os.uname().release}`, {os.cpu_count()} CPUs, load {load:.1f}; iperf3 TCP "
          f"a -> b, {args.seconds} s x {args.reps} per condition, alternated; "
          f"FILTER `{NONMATCH}` (matches none of the flow)\n")  # fmt: skip
    print("| condition | median Gbit/s | runs | vs untraced |")
    print("|---|---:|---|---:|")
    for k in KINDS:
        runs = ", ".join(f"{v:.2f}" for v in results[k])
        print(f"| {k} | {med[k]:.2f} | {runs} | {med[k] / med['untraced']:.3f} |")
    ratio = med["trace --nftrace"] / med["trace"]
    print(f"\n--nftrace / without, same filter: **{ratio:.3f}** (goal >= 0.99)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
