"""Where `vethtrace trace icmp -n NS --json` spends its time from exec to
"probes attached" (issue #18, part 1), with a warm program cache.

A parent stamps CLOCK_MONOTONIC (system-wide, so comparable across
processes) just before it spawns a child interpreter; the child wraps the
functions on the start path with timers, runs the real `cli.main()`, and
stops at the event loop (everything before it is start-up). Per phase: the
median over the runs of the time spent inside it. "interpreter" is spawn to
the child's first statement (Python's own start, `site`); "imports" is
`vethtrace.cli` and the trace command's module with what they import; the
rest is time inside run() (lazy imports count where they happen); "other"
is what no wrapper covered. The loads are timed per bpf(2) command.

    .venv/bin/python bench/startup.py [--runs 15] [--netns NS]

Needs root; makes (and removes) a namespace of its own unless --netns names
one. The first run is untimed: it fills the program cache if it is empty.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import sys, time
T = {"first": time.monotonic()}
S = {}
import vethtrace.cli, vethtrace.commands.trace
T["imported"] = time.monotonic()
T["package"] = vethtrace.__file__
from vethtrace.collect import bpf, progcache, syscall
from vethtrace.commands import trace

def wrap(mod, attr, phase):
    fn = getattr(mod, attr)
    def timed(*a, **k):
        t = time.monotonic()
        try:
            return fn(*a, **k)
        finally:
            S[phase] = S.get(phase, 0.0) + time.monotonic() - t
    setattr(mod, attr, timed)

BPF_CMDS = {0: "bpf(2) map create", 5: "bpf(2) program load + verify",
            17: "bpf(2) raw tracepoint attach"}
real_bpf = syscall.bpf
IN_LOAD = []
def bpf_timed(cmd, attr):
    t = time.monotonic()
    try:
        return real_bpf(cmd, attr)
    finally:
        if IN_LOAD:  # the plan's trials make bpf(2) calls too: counted there
            phase = BPF_CMDS.get(cmd, "bpf(2) other")
            S[phase] = S.get(phase, 0.0) + time.monotonic() - t
syscall.bpf = bpf_timed
real_load = progcache.load
def load(k):
    IN_LOAD.append(1)
    t = time.monotonic()
    try:
        return real_load(k)
    finally:
        IN_LOAD.clear()
        S["program cache: read + load (all)"] = time.monotonic() - t
bpf.progcache.load = load
for mod, attr, phase in [
    (trace.netnsmod, "inode_of", "-n names to inodes"),
    (bpf, "compile_filter", "filter compile"),
    (bpf, "contract", "probe contract (vethtrace.h)"),
    (bpf.planmod, "decide", "plan: kernel trials"),
    (bpf.headersmod, "prepare", "headers"),
    (bpf, "kernel_constants", "BTF facts (kcache)"),
    (bpf, "drop_reason_tables", "BTF facts (kcache)"),
    (bpf, "build_source", "probe source + flags"),
    (bpf, "cflags", "probe source + flags"),
    (bpf.progcache, "key", "program cache key"),
    (bpf, "Decoder", "decoder + ring buffer mmap"),
    (bpf, "RingReader", "decoder + ring buffer mmap"),
]:
    wrap(mod, attr, phase)
real_start = bpf.BpfCollector.start
def start(self):
    t = time.monotonic()
    try:
        return real_start(self)
    finally:
        T["attached"] = time.monotonic()
        S["collector.start() total"] = T["attached"] - t
bpf.BpfCollector.start = start
class Done(Exception):
    pass
def loop(*a, **k):
    T["loop"] = time.monotonic()
    raise Done
trace._loop = loop
class Tap:
    # stderr, noting when the "tracing…" line is written
    def __init__(self, stream):
        self.stream = stream
    def write(self, text):
        if "tracing…" in text and "line" not in T:
            T["line"] = time.monotonic()
        return self.stream.write(text)
    def __getattr__(self, name):
        return getattr(self.stream, name)
sys.stderr = Tap(sys.stderr)
sys.argv = ["vethtrace", "trace", "icmp", "-n", sys.argv[1], "--json"]
try:
    vethtrace.cli.main(sys.argv[1:])
except Done:
    pass
print(json.dumps({"T": T, "S": S}), file=sys.__stderr__)
""".replace("import sys, time", "import sys, time, json")


# Phases in the order the start path meets them.
ORDER = [
    "-n names to inodes",
    "filter compile",
    "probe contract (vethtrace.h)",
    "collector.start() total",  # the rows after it are its parts
    "plan: kernel trials",
    "headers",
    "BTF facts (kcache)",
    "probe source + flags",
    "program cache key",
    "program cache: read + load (all)",
    "bpf(2) map create",
    "bpf(2) program load + verify",
    "bpf(2) raw tracepoint attach",
    "decoder + ring buffer mmap",
]
PARTS = set(ORDER[ORDER.index("plan: kernel trials") :])


def one(python: str, netns: str, env: dict[str, str]) -> dict[str, dict[str, float]]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [python, "-c", CHILD, netns],
        cwd="/",  # `-c` puts the working directory first on sys.path: not a checkout
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        check=False,
    )
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    if not last.startswith("{"):
        raise RuntimeError(f"child failed: {proc.stderr[-2000:]}")
    doc = json.loads(last)
    doc["package"] = doc["T"].pop("package")
    doc["T"] = {k: v - t0 for k, v in doc["T"].items()}
    return doc


def table(runs: list[dict[str, dict[str, float]]]) -> list[tuple[str, float]]:
    """(row, median ms) for one code base's runs."""
    med = statistics.median
    T = {k: med(r["T"][k] for r in runs) for k in ("first", "attached", "loop")}
    imported = med(r["T"]["imported"] - r["T"]["first"] for r in runs)
    rows = [
        ("interpreter start (spawn -> first statement)", T["first"]),
        ("imports (cli + commands.trace)", imported),
    ]
    seen = {p for r in runs for p in r["S"]}
    covered = 0.0
    for p in [*ORDER, *sorted(seen - set(ORDER))]:
        v = med(r["S"].get(p, 0.0) for r in runs)
        covered += 0.0 if p in PARTS else v
        rows.append((f"- {p}" if p in PARTS else p, v))
    rows.append(("**spawn -> attached** (end of collector.start())", T["attached"]))
    rows.append(
        ("other (not covered above, to attached)", T["attached"] - T["first"] - imported - covered)
    )
    after = med(r["T"]["loop"] - r["T"]["attached"] for r in runs)
    rows.append(("attached -> event loop (output, names, scope watch)", after))
    line = med(r["T"].get("line", r["T"]["loop"]) - r["T"]["attached"] for r in runs)
    rows.append(('- of which attached -> "tracing…" line on stderr', line))
    rows.append(("spawn -> event loop", T["loop"]))
    return [(name, v * 1e3) for name, v in rows]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--netns", help="an existing namespace (default: one made for the run)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run the vethtrace package in DIR (e.g. `git archive main vethtrace | "
        "tar -x -C DIR`), alternating with this one, as a second column",
    )
    args = ap.parse_args()
    made = None
    if not args.netns:
        made = args.netns = f"vtbs{os.getpid()}-a"
        subprocess.run(["ip", "netns", "add", made], check=True)
    envs = {"this": dict(os.environ)}
    if args.baseline:
        envs["baseline"] = {**os.environ, "PYTHONPATH": args.baseline}
    runs: dict[str, list[dict[str, dict[str, float]]]] = {k: [] for k in envs}
    try:
        for env in envs.values():
            one(args.python, args.netns, env)  # fills the program cache, untimed
        for _ in range(args.runs):
            for k, env in envs.items():  # alternating: load changes hit both
                runs[k].append(one(args.python, args.netns, env))
    finally:
        if made:
            subprocess.run(["ip", "netns", "del", made], check=False)
    from trace_bench import header  # beside this file (sys.path[0])

    print(header(".venv/bin/python"))
    for k, v in runs.items():
        print(f"{k}: {v[0]['package']}")
    print()
    tables = {k: dict(table(v)) for k, v in runs.items()}
    names = list(dict.fromkeys(n for t in tables.values() for n in t))
    print("| phase (median of runs), ms | " + " | ".join(tables) + " |")
    print("|---|" + "---:|" * len(tables))
    for n in names:
        cells = " | ".join(f"{t[n]:.1f}" if n in t else "-" for t in tables.values())
        print(f"| {n} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
