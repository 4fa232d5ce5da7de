"""Benchmark the path model's cost on a large topology, side by side in one run:
`check` now vs `check` before the path rules, `topo --json` now vs before and vs
plotnetcfg, `vethtrace path` for one packet (whole command) and `predict()`
alone on a topology discovered once.

Builds --size namespaces with bench/topo.py's builder (each a veth into br0 in
a hub namespace, 10.200.0.0/16), and gives every leaf a default route via the
hub's br0 address, so check's path rules have work: each leaf probes its
default gateway and its next peer on the segment (a ring by address), i.e.
2 x size predictions. "Before" is a git worktree of commit c0ab74a (main before
any path integration: no rules/paths.py, a smaller discovery), run with the
same interpreter and virtualenv (the code is whatever tree the command runs in):

    git worktree add --detach /tmp/vt-path-bench-before c0ab74a
    sudo flock /tmp/vethtrace-bench.lock .venv/bin/python bench/path_bench.py \\
        [--size 500] [--repeat 5] [--prefix vtpb-] [--before /tmp/vt-path-bench-before]

The commands run interleaved (ABCDEF ABCDEF ...: a load spike hits all alike)
after one untimed run of each; the table gives median wall and CPU time
(user+sys, children included) and the ratios asked for in issue #15. Then it
profiles where `check`'s time goes in-process (discovery, static rules, path
rules). Everything is created under --prefix and removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from topo import ENV, build, cleanup, run_in_ns, settle  # noqa: E402

from vethtrace.diagnose.path import Flow, predict  # noqa: E402
from vethtrace.topology import discover  # noqa: E402

PYTHON = str(REPO / ".venv" / "bin" / "python")
# The CLI of whichever tree is the working directory (sys.path[0] is '' with -c).
RUN = "import sys; from vethtrace.cli import main; sys.argv[0] = 'vethtrace'; sys.exit(main())"


def cli(tree: Path, *args: str) -> tuple[list[str], Path]:
    return [PYTHON, "-c", RUN, *args], tree


def measure(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one run (exit 0 or 1: check exits 1 on findings)."""
    with open(os.devnull, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.DEVNULL, env=ENV)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc not in (0, 1):
        raise RuntimeError(f"{cmd[3:]} in {cwd} exited {rc}")
    return wall, usage.ru_utime + usage.ru_stime


def profile_check() -> list[tuple[str, float]]:
    """Where check's time goes, in-process: discovery, the static rules, the path
    rules (which predict every probe once and cache the failures)."""
    from vethtrace.diagnose.check import run_rules
    from vethtrace.diagnose.rules import RULES

    t0 = time.perf_counter()
    topo = discover()
    t1 = time.perf_counter()
    static = [r.id for r in RULES if r.phase == 0]
    run_rules(topo, only=static)
    t2 = time.perf_counter()
    run_rules(topo)
    t3 = time.perf_counter()
    return [
        ("discover()", t1 - t0),
        ("static rules (phase 0)", t2 - t1),
        ("all rules (static + path rules)", t3 - t2),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--prefix", default="vtpb-")
    ap.add_argument("--before", default="/tmp/vt-path-bench-before")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/path_bench.py: needs root", file=sys.stderr)
        return 2
    before = Path(args.before)
    if not (before / "vethtrace" / "cli.py").exists():
        print(f"bench/path_bench.py: no 'before' tree at {before} (see --help)", file=sys.stderr)
        return 2
    n = args.size
    a, b = divmod(n, 250)  # the last leaf's address, as topo.build numbers them
    dst = f"10.200.{a}.{b}"
    src = f"{args.prefix}n0"
    load_start = os.getloadavg()
    try:
        t0 = time.perf_counter()
        build(args.prefix, 0, n)
        for i in range(n):
            run_in_ns(f"{args.prefix}n{i}", ["route add default via 10.200.255.254"])
        print(f"built {n} namespaces in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        settle(args.prefix)
        topo = discover()
        model = []
        for _ in range(max(args.repeat, 5)):
            t = time.perf_counter()
            pred = predict(topo, Flow(src, dst))
            model.append(time.perf_counter() - t)
        assert pred.ok, [h.decision for h in pred.forward + pred.reply]
        tools = {
            "check (now)": cli(REPO, "check", "--json"),
            "check (c0ab74a, before path rules)": cli(before, "check", "--json"),
            "topo --json (now)": cli(REPO, "topo", "--json"),
            "topo --json (c0ab74a)": cli(before, "topo", "--json"),
            "plotnetcfg": (["unshare", "--pid", "--fork", "--mount-proc", "plotnetcfg"], REPO),
            "path, one packet (whole command)": cli(REPO, "path", "--from", src, dst),
        }
        runs: dict[str, list[tuple[float, float]]] = {t: [] for t in tools}
        for cmd, cwd in tools.values():
            measure(cmd, cwd)
        for _ in range(args.repeat):
            for tool, (cmd, cwd) in tools.items():
                runs[tool].append(measure(cmd, cwd))
        prof = profile_check()
    finally:
        cleanup(args.prefix)
    load_end = os.getloadavg()

    def wall(tool: str) -> float:
        return statistics.median(w for w, _c in runs[tool])

    def cpu(tool: str) -> float:
        return statistics.median(c for _w, c in runs[tool])

    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M')}, {os.uname().release}, {os.cpu_count()} CPUs; "
        f"{n} namespaces + hub; median of {args.repeat} interleaved runs; load average "
        f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end\n"
    )
    print("| what | wall | CPU |")
    print("|---|---:|---:|")
    for tool in runs:
        print(f"| {tool} | {wall(tool) * 1000:.0f} ms | {cpu(tool) * 1000:.0f} ms |")
    print(f"| predict() one packet, forward + reply (in-process) | "
          f"{statistics.median(model) * 1000:.1f} ms | – |")
    print()
    ratio = wall("check (now)") / wall("check (c0ab74a, before path rules)")
    print(f"- check now / before: {ratio:.2f}x wall "
          f"({cpu('check (now)') / cpu('check (c0ab74a, before path rules)'):.2f}x CPU); "
          f"target <= 2x")
    print(f"- plotnetcfg / topo --json now: {wall('plotnetcfg') / wall('topo --json (now)'):.2f}x "
          f"(before: {wall('plotnetcfg') / wall('topo --json (c0ab74a)'):.2f}x)")
    print(f"- predict() one packet: {statistics.median(model) * 1000:.1f} ms; target <= 50 ms")
    print("\nin-process check, one run:")
    for what, secs in prof:
        print(f"- {what}: {secs * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
