"""Re-make the sample recordings: real runs of `vethtrace ping --write` on the labs.

    sudo .venv/bin/python samples/recordings/make.py            # all of them
    sudo .venv/bin/python samples/recordings/make.py seed       # just one
    .venv/bin/python samples/recordings/make.py --expected      # only the expected
                                                                # reports, from the
                                                                # recordings as they are

For each lab: build it (prefix "vt-", so the samples read like the README),
run the lab's first failing ping expectation (the first one for healthy
labs) with `--write NAME.vtrec --pcap NAME.pcapng`, remove the lab, then
write what `vethtrace report` prints for the recording, as text (100
columns, no colour) and as JSON: NAME.expected.txt / NAME.expected.json.
tests/unit/test_report.py checks that report still reproduces them.

Recordings hold the kernel's timestamps, MAC addresses and namespace inodes
of the run that made them: re-making changes every file, so only re-make on
purpose (and look at the diff of the expected reports).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VETHTRACE = str(Path(sys.executable).parent / "vethtrace")
PREFIX = "vt-"
# Sample name -> lab scenario. The seed story's two stages, then each broken lab.
SAMPLES = {
    "seed": "seed",
    "seed-fixed": "seed-fixed",
    "veth-peer-down": "veth-peer-down",
    "bridge-down": "bridge-down",
    "bridge-netfilter-drop": "bridge-netfilter-drop",
    "missing-route": "missing-route",
    "mtu-mismatch": "mtu-mismatch",
}
# Recordings of `vethtrace trace --write` (report prints trace's lines, then
# the packet paths and findings): the lab's first failing ping is sent with the
# system's ping while trace records.
TRACE_SAMPLES = {"seed-trace": ("seed", "arp or icmp")}


def report_env() -> dict[str, str]:
    env = dict(os.environ, COLUMNS="100", TERM="dumb")
    env.pop("NO_COLOR", None)
    return env


def report(path: Path, json: bool = False) -> subprocess.CompletedProcess[str]:
    """`vethtrace report` the way the tests run it (cwd = the samples folder)."""
    return subprocess.run(
        [VETHTRACE, "report", path.name, *(["--json"] if json else [])],
        capture_output=True,
        text=True,
        cwd=path.parent,
        env=report_env(),
        timeout=120,
    )


def make(name: str) -> None:
    sys.path.insert(0, str(REPO))
    from vethtrace.lab import down, load, up

    if name in TRACE_SAMPLES:
        make_trace(name)
        return
    scenario = load(SAMPLES[name])
    pings = scenario.expect.pings
    if not pings:
        raise SystemExit(f"{name}: the scenario states no ping to record")
    chosen = next((p for p in pings if not p.ok), None)
    chosen = chosen or next((p for p in pings if p.size is None), pings[0])
    lab = up(scenario.name, PREFIX)
    if not lab.fresh:
        raise SystemExit(f"{name}: lab already up with prefix {PREFIX!r}; not touching it")
    rec, pcap = HERE / f"{name}.vtrec", HERE / f"{name}.pcapng"
    try:
        cmd = [VETHTRACE, "ping", "--from", lab.ns(chosen.source), lab.ns(chosen.netns)]
        cmd += [chosen.to, "--write", rec.name, "--pcap", pcap.name]
        if chosen.size is not None:
            cmd += ["--size", str(chosen.size)]
        live = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE, timeout=120)
        if live.returncode not in (0, 1):
            raise SystemExit(f"{name}: {' '.join(cmd)} failed:\n{live.stderr}")
    finally:
        down(scenario.name, PREFIX)
    write_expected(name)


def make_trace(name: str) -> None:
    from vethtrace.lab import down, load, up

    lab_name, filt = TRACE_SAMPLES[name]
    scenario = load(lab_name)
    chosen = next(p for p in scenario.expect.pings if not p.ok)
    lab = up(lab_name, PREFIX)
    if not lab.fresh:
        raise SystemExit(f"{name}: lab already up with prefix {PREFIX!r}; not touching it")
    rec = HERE / f"{name}.vtrec"
    try:
        names = sorted({lab.ns(n.name) for n in scenario.netns})
        cmd = [VETHTRACE, "trace", *filt.split(), "--duration", "5", "--write", rec.name]
        for ns in names:
            cmd += ["-n", ns]
        trace = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=HERE
        )
        assert trace.stderr is not None
        while "tracing" not in (line := trace.stderr.readline()):
            if not line:
                raise SystemExit(f"{name}: trace ended before tracing")
        ping = ["ip", "netns", "exec", lab.ns(chosen.source), "ping", "-c", "2", chosen.to]
        subprocess.run(ping, capture_output=True, timeout=30)
        trace.communicate(timeout=60)
    finally:
        down(lab_name, PREFIX)
    write_expected(name)


def write_expected(name: str) -> None:
    """NAME.expected.txt / .json: what report prints for the recording today.
    After a deliberate change to how ping or report print, re-make these and
    read the diff: it is the change users will see."""
    rec = HERE / f"{name}.vtrec"
    text, js = report(rec), report(rec, json=True)
    for out in (text, js):
        if out.returncode not in (0, 1):
            raise SystemExit(f"{name}: report failed:\n{out.stderr}")
    (HERE / f"{name}.expected.txt").write_text(text.stdout)
    (HERE / f"{name}.expected.json").write_text(js.stdout)
    lines = text.stdout.splitlines()
    verdict = next((ln for ln in lines if ln.split(":")[0].isupper()), "(no verdict line)")
    print(f"{name}: {rec.stat().st_size // 1024} KiB, exit {text.returncode}: {verdict[:90]}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--expected"]:
        for name in argv[1:] or [p.name.removesuffix(".vtrec") for p in HERE.glob("*.vtrec")]:
            write_expected(name)
        return 0
    if os.geteuid() != 0:
        print("make.py: needs root (builds labs, loads BPF)", file=sys.stderr)
        return 2
    known = [*SAMPLES, *TRACE_SAMPLES]
    for name in argv or known:
        if name not in known:
            print(f"make.py: unknown sample {name!r}; known: {', '.join(known)}", file=sys.stderr)
            return 2
        make(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
