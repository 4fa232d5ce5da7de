"""`trace` as people run it for minutes: what it says about a ping's replies,
namespaces that vanish, loss while it happens, its deadline under a flood and
the pcapng it writes (issue #20, the trace/watch half)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN
from tests.labs import built_lab

pytestmark = pytest.mark.privileged


@contextmanager
def tracing(*args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """`vethtrace trace ARGS`, returned once its probes are attached (the
    "tracing…" status line); killed if the test leaves it running."""
    proc = subprocess.Popen(
        [str(VENV_BIN / "vethtrace"), "trace", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "tracing" in line or not line:
                break
        assert "tracing" in line, line + (proc.stderr.read() if proc.poll() is not None else "")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def netns_exec(ns: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def test_ping_replies_are_not_drops_a_closed_port_is(prefix: str) -> None:
    """A ping's replies end as NO_SOCKET at ping_rcv (the raw socket took its
    copy): not a drop. A datagram to a closed UDP port is one (NO_SOCKET too,
    elsewhere), and so stays in the lines and the summary."""
    with built_lab("bridge-two", prefix) as lab:
        a, b = lab.ns("a"), lab.ns("b")
        with tracing("-n", a, "-n", b, "--duration", "5") as proc:
            assert netns_exec(a, "ping", "-c3", "-i0.2", "-W1", "10.0.0.2").returncode == 0
            netns_exec(a, "bash", "-c", "echo x > /dev/udp/10.0.0.2/9")
            out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    replies = [ln for ln in out.splitlines() if "echo reply" in ln and "kfree_skb" in ln]
    assert len(replies) >= 3, out
    assert not any("DROP" in ln for ln in replies), "\n".join(replies)
    assert all("freed (NO_SOCKET" in ln for ln in replies)
    udp = [ln for ln in out.splitlines() if "UDP" in ln and "kfree_skb" in ln]
    assert udp and all("DROP NO_SOCKET" in ln for ln in udp), out
    summary = err[err.index(" events in "):]
    assert "drops by reason: NO_SOCKET x1" in summary, summary
    assert "benign frees (not drops):" in summary
