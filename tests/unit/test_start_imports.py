"""What starting `vethtrace trace` imports (issue #18: start to attached <= 0.1 s
with cached programs). The CLI and the trace command's module must not pull
in what the cached start does not use: bcc (only to compile), scapy and
pyroute2 (not tracing's), rich (only once the probes are attached, or for a
spinner on a terminal), http.client (only to ask a container runtime),
importlib.resources and platform (cheap equivalents are used). Each of them
costs milliseconds to tens of milliseconds at every start.

Checked in a fresh interpreter: this test process has imported much already."""

from __future__ import annotations

import json
import subprocess
import sys

NOT_AT_START = (
    "bcc",
    "scapy",
    "pyroute2",
    "rich",
    "http.client",
    "importlib.resources",
    "platform",
)

LOADED = (
    "import json, sys\n"
    "import vethtrace.cli, vethtrace.commands.trace\n"
    "print(json.dumps(sorted(sys.modules)))\n"
)


def test_cli_and_trace_import_nothing_the_cached_start_does_not_use() -> None:
    out = subprocess.run(
        [sys.executable, "-c", LOADED], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(out.stdout))
    assert "vethtrace.collect.bpf" in loaded  # the check looks at the right process
    heavy = [m for m in NOT_AT_START if m in loaded]  # a submodule brings its package
    assert not heavy, f"imported by `vethtrace trace` before it attaches: {heavy}"
