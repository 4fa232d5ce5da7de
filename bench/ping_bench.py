"""Time to verdict of `vethtrace ping` on the seed labs, next to plain `ping -c1 -W1`.

    sudo .venv/bin/python bench/ping_bench.py [--repeat 5] [--prefix vtb-ping-]

Builds `seed` and `seed-fixed` (each under its own prefix), then runs, interleaved,
`repeat` times per lab: `vethtrace ping --from HOST SONG 192.168.122.102 --json`
(wall time of the whole command, and the verdict time it reports, measured
from its own start) and `ip netns exec HOST ping -c1 -W1 192.168.122.102`
(wall time; ping -W1 waits a second for an answer that never comes on seed).
Prints a Markdown table of medians; removes the labs at the end (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VETHTRACE = str(Path(sys.executable).parent / "vethtrace")
TARGET = "192.168.122.102"


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    return time.monotonic() - t0, r


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--prefix", default="vtb-ping-")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("ping_bench: needs root", file=sys.stderr)
        return 2
    from vethtrace.lab import up

    labs = {}
    rows = []
    try:
        for name in ("seed", "seed-fixed"):
            labs[name] = up(name, prefix=f"{args.prefix}{name}-")
        samples: dict[str, dict[str, list[float]]] = {
            n: {"wall": [], "verdict": [], "ping": [], "setup": [], "compile": [], "cpu": []}
            for n in labs
        }
        verdicts: dict[str, str] = {}
        pinged: dict[str, bool] = {}
        for _ in range(args.repeat):
            for name, lab in labs.items():
                host, song = lab.ns("host"), lab.ns("song")
                cpu0 = children_cpu()
                wall, r = timed([VETHTRACE, "ping", "--from", host, song, TARGET, "--json"])
                samples[name]["cpu"].append(children_cpu() - cpu0)
                obj = json.loads(r.stdout)
                samples[name]["compile"].append(obj["timings"].get("probes_compile_attach", 0))
                samples[name]["wall"].append(wall)
                samples[name]["verdict"].append(obj["timings"]["verdict"])
                samples[name]["setup"].append(obj["timings"]["probes"])
                verdicts[name] = obj["verdict"]
                wall, r = timed(["ip", "netns", "exec", host, "ping", "-n", "-c1", "-W1", TARGET])
                samples[name]["ping"].append(wall)
                pinged[name] = r.returncode == 0
        for name, s in samples.items():
            med = {k: statistics.median(v) for k, v in s.items()}
            rows.append(
                f"| {name} | {verdicts[name]} | {med['verdict']:.2f} s | {med['setup']:.2f} s "
                f"| {med['compile']:.2f} s | {med['wall']:.2f} s | {med['cpu']:.2f} s "
                f"| {med['ping']:.2f} s ({'answered' if pinged[name] else 'no answer'}) |"
            )
    finally:
        from vethtrace.lab import down

        for name in labs:
            down(name, prefix=f"{args.prefix}{name}-")
    load = os.getloadavg()[0]
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, load average {load:.1f}, "
          f"median of {args.repeat}\n")  # fmt: skip
    print(
        "| lab | verdict | time to verdict | probes attached | of which BPF compile "
        "| vethtrace wall | vethtrace CPU | ping -c1 -W1 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
