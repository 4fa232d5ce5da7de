"""Benchmark `vethtrace topo --json` against plotnetcfg and an `ip` loop.

Builds 10, 100 and 500 namespaces (growing the same set), each with a veth
pair whose other end is a port of br0 in a hub namespace, addresses on both
sides; at each size runs, side by side and in the same run:

  vethtrace topo --json      (the installed console script, full discovery)
  plotnetcfg                 (Debian package; run in a fresh PID namespace,
                              since it insists on opening /proc/1/ns/net,
                              which this machine refuses even to root)
  ip loop                    for ns in $(ip netns list); do ip -n $ns -j -d addr; done

interleaved (a load spike hits every tool alike; one untimed run of each
first fills the page and byte-code caches; Python keeps its default byte-code
cache even where PYTHONDONTWRITEBYTECODE is set), and prints a Markdown table:
median wall and CPU time (user+sys, children included) of --repeat runs, the
time added per added namespace, and peak RSS. At the largest size it also
times decoding one capture with our struct decoder vs pyroute2's message
classes. Everything is created under --prefix and removed at the end, also
on Ctrl-C.

    sudo .venv/bin/python bench/topo.py [--sizes 10,100,500] [--repeat 5] [--prefix vtb-]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vethtrace import netns  # noqa: E402

VETHTRACE = str(REPO / ".venv" / "bin" / "vethtrace")


def ip_batch(lines: list[str]) -> None:
    subprocess.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True)


def build(prefix: str, start: int, end: int) -> None:
    """Add namespaces start..end-1 (and the hub on first call)."""
    hub = f"{prefix}hub"
    if start == 0:
        ip_batch([f"netns add {hub}"])
        with_hub = [
            "link add br0 type bridge",
            "link set br0 up",
            "addr add 10.200.255.254/16 dev br0",
        ]
        run_in_ns(hub, with_hub)
    ip_batch([f"netns add {prefix}n{i}" for i in range(start, end)])
    hub_lines = []
    for i in range(start, end):
        hub_lines += [
            f"link add h{i} type veth peer name eth0 netns {prefix}n{i}",
            f"link set h{i} master br0 up",
        ]
    run_in_ns(hub, hub_lines)
    errors: list[BaseException] = []

    def leaf(i: int) -> None:
        a, b = divmod(i + 1, 250)
        run_in_ns(
            f"{prefix}n{i}",
            [f"addr add 10.200.{a}.{b}/16 dev eth0", "link set eth0 up", "link set lo up"],
        )

    def worker(idx: list[int]) -> None:
        try:
            for i in idx:
                leaf(i)
        except BaseException as exc:
            errors.append(exc)

    todo = list(range(start, end))
    threads = [threading.Thread(target=worker, args=(todo[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def run_in_ns(name: str, lines: list[str]) -> None:
    """`ip -batch` inside namespace `name` (the child inherits the thread's netns)."""
    netns.run_in(name, lambda: ip_batch(lines))


def cleanup(prefix: str) -> None:
    names = [n for n in netns.named() if n.startswith(prefix)]
    if names:
        subprocess.run(
            ["ip", "-batch", "-"],
            input="".join(f"netns del {n}\n" for n in names),
            text=True,
            check=False,
        )


FAILURES: dict[str, int] = {}

# The tools run with Python's default byte-code cache (__pycache__), as on a
# user's machine: our sandbox sets PYTHONDONTWRITEBYTECODE, which would make
# every run of vethtrace recompile its modules (~10 ms).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def measure(cmd: list[str] | str, shell: bool = False, tries: int = 3) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user+sys, children included) and peak RSS (KiB).
    A failed run is retried (and counted): on a shared machine other people's
    namespaces vanish mid-run, which plotnetcfg does not survive."""
    for _ in range(tries):
        with open(os.devnull, "wb") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.DEVNULL, shell=shell, env=ENV
            )
            _pid, status, usage = os.wait4(proc.pid, 0)
            elapsed = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) == 0:
            return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss
        FAILURES[str(cmd)] = FAILURES.get(str(cmd), 0) + 1
    raise RuntimeError(f"{cmd} failed {tries} times")


def settle(prefix: str, seconds: float = 3.0) -> None:
    """Let the kernel finish what creating namespaces queued (it holds the RTNL
    lock that every netlink dump of every tool waits for) before timing."""
    time.sleep(seconds)


TOOLS: dict[str, tuple[list[str] | str, bool]] = {
    "vethtrace topo --json": ([VETHTRACE, "topo", "--json"], False),
    "plotnetcfg": (["unshare", "--pid", "--fork", "--mount-proc", "plotnetcfg"], False),
    "ip loop": (
        "for ns in $(ip netns list | cut -d' ' -f1); do ip -n $ns -j -d addr; done",
        True,
    ),
}


def decoders() -> tuple[float, float, int]:
    """Seconds to decode one capture of everything with our struct decoder vs
    pyroute2's message classes (same bytes; links, addresses, routes,
    neighbours, FDB): why discovery reads sockets itself."""
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.ndmsg import ndmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    from vethtrace.topology import build, capture, nlmsg
    from vethtrace.topology.namespaces import enumerate_namespaces

    cap = capture.capture(enumerate_namespaces([]))

    def ours_once() -> None:
        for raw in cap.namespaces:
            build.namespace(raw, build.parse.links(raw.links, raw.inode))

    def theirs_once() -> int:
        count = 0
        for raw in cap.namespaces:
            for data, cls in (
                (raw.links, ifinfmsg),
                (raw.addrs, ifaddrmsg),
                (raw.routes, rtmsg),
                (raw.neigh, ndmsg),
                (raw.fdb, ndmsg),
            ):
                for mtype, _f, off, end in nlmsg.messages(data):
                    if mtype > nlmsg.NLMSG_DONE:
                        msg = cls(data[off - 16 : end])
                        msg.decode()
                        count += 1
        return count

    def best(fn) -> float:  # the fastest of 3: load spikes only ever add time
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(ours_once), best(theirs_once), theirs_once()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,100,500")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--prefix", default="vtb-")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/topo.py: needs root", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    others = len([n for n in netns.named() if not n.startswith(args.prefix)])
    rows: list[tuple[int, str, float, float, int]] = []
    built = 0
    try:
        for size in sizes:
            t0 = time.perf_counter()
            build(args.prefix, built, size)
            print(
                f"built {size} namespaces (+{size - built} in {time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
            )
            built = size
            settle(args.prefix)
            runs: dict[str, list[tuple[float, float, int]]] = {tool: [] for tool in TOOLS}
            for cmd, shell in TOOLS.values():  # untimed: fills the page and byte-code caches
                measure(cmd, shell)
            for _ in range(args.repeat):  # interleaved: load spikes hit every tool alike
                for tool, (cmd, shell) in TOOLS.items():
                    runs[tool].append(measure(cmd, shell))
            for tool, results in runs.items():
                wall = statistics.median(r[0] for r in results)
                cpu = statistics.median(r[1] for r in results)
                rss = max(r[2] for r in results)
                rows.append((size, tool, wall, cpu, rss))
                print(
                    f"  {size:4d} {tool:24s} {wall * 1000:8.0f} ms  cpu {cpu * 1000:6.0f} ms"
                    f"  {rss / 1024:6.1f} MiB",
                    file=sys.stderr,
                )
        ours, theirs, count = decoders()
    finally:
        cleanup(args.prefix)
    print(
        f"\n{os.uname().release}, {os.cpu_count()} CPUs; median of {args.repeat} runs; "
        f"+1 hub namespace; {others} other namespaces present\n"
    )
    print("| namespaces | tool | wall | per ns | added per ns | CPU | CPU added per ns | RSS |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    prev: dict[str, tuple[int, float, float]] = {}
    for size, tool, wall, cpu, rss in rows:
        # (time at this size - time at the previous size) / namespaces added
        added = cpu_added = "–"
        if tool in prev:
            psize, pwall, pcpu = prev[tool]
            added = f"{(wall - pwall) / (size - psize) * 1000:.2f} ms"
            cpu_added = f"{(cpu - pcpu) / (size - psize) * 1000:.2f} ms"
        prev[tool] = (size, wall, cpu)
        print(
            f"| {size} | {tool} | {wall * 1000:.0f} ms | {wall / size * 1000:.2f} ms | {added} "
            f"| {cpu * 1000:.0f} ms | {cpu_added} | {rss / 1024:.1f} MiB |"
        )
    by = {(s, t): w for s, t, w, _c, _r in rows}
    last = sizes[-1]
    ratio = by[(last, "plotnetcfg")] / by[(last, "vethtrace topo --json")]
    print(f"\nat {last}: vethtrace topo --json is {ratio:.1f}x faster than plotnetcfg")
    print(
        f"decoding one capture at {last} ({count} messages): vethtrace's struct decoder "
        f"{ours * 1000:.0f} ms (model objects included), pyroute2's message classes "
        f"{theirs * 1000:.0f} ms (decode only)"
    )
    for cmd, n in FAILURES.items():
        print(f"(retried {n} failed run(s) of {cmd})")
    load = os.getloadavg()[0]
    print(f"load average during the run: {load:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
