"""Benchmark `vethtrace path` on a large topology, beside `vethtrace topo --json`.

Builds --size namespaces with bench/topo.py's builder (each a veth into br0 in
a hub namespace, 10.200.0.0/16), then in the same run:

  predict()                 one packet n0 -> the last leaf, on a topology discovered once
                            (the model alone: the target is <= 50 ms at 500 namespaces)
  vethtrace path            the whole command (discovery included), wall time
  vethtrace topo --json     the whole command, wall time

medians of --repeat runs, interleaved. Everything is created under --prefix
and removed at the end.

    sudo .venv/bin/python bench/path_bench.py [--size 500] [--repeat 5] [--prefix vtpb-]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from topo import VETHTRACE, build, cleanup, measure, settle  # noqa: E402

from vethtrace.diagnose.path import Flow, predict  # noqa: E402
from vethtrace.topology import discover  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--prefix", default="vtpb-")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/path_bench.py: needs root", file=sys.stderr)
        return 2
    n = args.size
    a, b = divmod(n, 250)  # the last leaf's address, as topo.build numbers them
    dst = f"10.200.{a}.{b}"
    src = f"{args.prefix}n0"
    try:
        t0 = time.perf_counter()
        build(args.prefix, 0, n)
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
            "vethtrace path": [VETHTRACE, "path", "--from", src, dst],
            "vethtrace topo --json": [VETHTRACE, "topo", "--json"],
        }
        runs: dict[str, list[float]] = {t: [] for t in tools}
        for cmd in tools.values():
            measure(cmd)
        for _ in range(args.repeat):
            for tool, cmd in tools.items():
                runs[tool].append(measure(cmd)[0])
    finally:
        cleanup(args.prefix)
    print(
        f"\n{os.uname().release}, {os.cpu_count()} CPUs; {n} namespaces + hub; "
        f"median of {args.repeat} runs\n"
    )
    print("| what | wall |")
    print("|---|---:|")
    print(f"| predict() one packet, forward + reply | {statistics.median(model) * 1000:.1f} ms |")
    for tool, walls in runs.items():
        print(f"| {tool} (whole command) | {statistics.median(walls) * 1000:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
