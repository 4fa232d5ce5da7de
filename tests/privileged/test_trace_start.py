"""`vethtrace trace` from exec to "probes attached" (issue #18, part 1).

With a warm program cache the start must not load bcc (it only compiles),
scapy, pyroute2, rich or http.client before the probes are attached, and the
first thing on stderr is the "tracing…" line saying when they were. The
first run in an empty cache compiles (and loads bcc: the check would see it),
the second must come from the cache. Both runs are the real CLI in a fresh
interpreter, with the cache in a directory of this test's own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.privileged

NOT_BEFORE_ATTACH = ("bcc", "scapy", "pyroute2", "rich", "http.client")

# The CLI as the console script runs it; what is loaded when start() returns
# (the probes attached) goes to the file named by $VT_TEST_REPORT.
CHILD = """
import json, os, sys
from vethtrace.collect import bpf
start = bpf.BpfCollector.start
def attached(self):
    plan = start(self)
    names = [m for m in NAMES if m in sys.modules]
    with open(os.environ["VT_TEST_REPORT"], "w") as f:
        json.dump({"cached": self.from_cache, "loaded": names}, f)
    return plan
bpf.BpfCollector.start = attached
from vethtrace.cli import main
sys.exit(main(sys.argv[1:]))
""".replace("NAMES", repr(NOT_BEFORE_ATTACH))


def _trace(ns: str, cache: Path) -> tuple[dict[str, object], str]:
    report = cache / "report.json"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, "trace", "icmp", "-n", ns, "--json", "--duration", "0.2"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VETHTRACE_CACHE": str(cache), "VT_TEST_REPORT": str(report)},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(report.read_text()), proc.stderr


def test_a_cached_start_attaches_before_loading_what_it_does_not_need(
    prefix: str, tmp_path: Path
) -> None:
    ns = f"{prefix}a"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        first, _ = _trace(ns, tmp_path)
        second, err = _trace(ns, tmp_path)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert first["cached"] is False and "bcc" in first["loaded"]  # compiled: bcc is seen
    assert second["cached"] is True
    assert second["loaded"] == [], f"loaded before the probes were attached: {second['loaded']}"
    line = err.splitlines()[0]
    assert line.startswith("tracing… (") and "cached programs" in line, err
    assert re.search(r"attached \d+\.\d\d s after start\)", line), line
