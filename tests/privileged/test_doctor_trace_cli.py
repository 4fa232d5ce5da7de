"""`vethtrace doctor` against facts read independently of its code, and the
`trace` command as a user runs it (JSON lines, names, bad input)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN
from tests.labs import built_lab

pytestmark = pytest.mark.privileged


def _config(option: str) -> str | None:
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            for line in f:
                if line.startswith(f"{option}="):
                    return line.strip().split("=", 1)[1]
                if line.startswith(f"# {option} is not set"):
                    return "n"
    except OSError:
        return None
    return None


def test_doctor_json_agrees_with_the_kernel(cli: Callable) -> None:
    res = cli("doctor", "--json")
    report = json.loads(res.stdout)
    checks = report["checks"]
    assert report["kernel"] == os.uname().release
    kprobes_config = _config("CONFIG_KPROBES")
    kprobe_events = any(
        os.path.exists(f"{d}/kprobe_events")
        for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
    )
    if kprobes_config == "n":
        assert checks["kprobes"]["ok"] is False
        assert "CONFIG_KPROBES" in checks["kprobes"]["detail"] or not kprobe_events
    if kprobes_config == "y" and kprobe_events:
        assert checks["kprobes"]["ok"] is True
    assert checks["btf"]["ok"] == Path("/sys/kernel/btf/vmlinux").exists()
    assert checks["root"]["ok"] is True
    tracefs_mounted = any(
        line.split()[2] == "tracefs" for line in Path("/proc/mounts").read_text().splitlines()
    )
    assert checks["tracefs"]["ok"] == tracefs_mounted
    # tracepoints must work on our machines, and then tracing is possible
    assert checks["tracepoints"]["ok"] is True
    assert report["tracing_possible"] is True and res.returncode == 0
    assert checks["headers"]["detail"].startswith(("matching", "generic"))
    points = {p["point"]: p for p in report["plan"]["points"]}
    assert set(points) >= {"veth transmit", "bridge receive", "device receive", "drops",
                           "neighbour"}  # fmt: skip
    if not checks["kprobes"]["ok"] and not checks["fentry"]["ok"]:
        assert points["veth transmit"]["mechanism"] == "tracepoint"
        assert "br_handle_frame" in points["bridge receive"]["blind_spot"]
        assert any(t.startswith("kprobe:") for t in points["veth transmit"]["tried"])
    assert report["compile_seconds"] is not None and report["compile_seconds"] < 20


def test_doctor_human_table(cli: Callable) -> None:
    res = cli("doctor", env={**os.environ, "COLUMNS": "100"})
    assert res.returncode == 0
    for word in ("kprobes", "fentry", "tracepoints", "headers", "bcc", "probe plan",
                 "veth transmit", "cannot see"):  # fmt: skip
        assert word in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 100


def test_trace_json_lines_with_names(prefix: str, tmp_path: Path) -> None:
    rec_path = tmp_path / "run.vtrec"
    with built_lab("bridge-two", prefix) as lab:
        a, b = lab.ns("a"), lab.ns("b")
        proc = subprocess.Popen(
            [str(VENV_BIN / "vethtrace"), "trace", "icmp", "-n", a, "--json", "--duration", "4",
             "--write", str(rec_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # wait for the "tracing…" line, then ping
        assert proc.stderr is not None
        deadline = time.monotonic() + 15
        ready = ""
        while time.monotonic() < deadline:
            ready = proc.stderr.readline()
            if "tracing" in ready or not ready:
                break
        assert "tracing" in ready and "tracepoint" in ready
        subprocess.run(["ip", "netns", "exec", a, "ping", "-c1", "-W1", "10.0.0.2"],
                       capture_output=True, check=False)  # fmt: skip
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        assert events, err
        assert {e["netns_name"] for e in events} == {a}
        assert all(e["packet"]["ip_proto"] == 1 for e in events if e["packet"])
        points = {e["point"] for e in events}
        assert {"net_dev_queue", "netif_receive_skb"} <= points
        eth0 = [e for e in events if e["ifname"] == "eth0"]
        ifindex = json.loads(
            subprocess.run(
                ["ip", "-j", "-n", a, "link", "show", "eth0"], capture_output=True, text=True
            ).stdout
        )[0]["ifindex"]
        assert eth0 and all(e["ifindex"] == ifindex for e in eth0)
        assert "lost" in err and "drops by reason" in err
        del b
    from vethtrace.record import read

    rec = read(rec_path)
    assert [e.ts_ns for e in rec.events] == [e["ts_ns"] for e in events]
    assert rec.lost == 0
    # the scope travels with the recording, so `report` checks the same namespaces
    assert rec.header["trace"] == {"filter": "icmp", "netns": [a]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trace", "ip6"], "unsupported filter syntax at 'ip6'"),
        (["trace", "-n", "vtt-no-such-ns"], "no network namespace named"),
        (["trace", "--duration", "0"], "--duration: 0 is out of range"),
    ],
)
def test_trace_bad_input(cli: Callable, args: list[str], message: str) -> None:
    res = cli(*args)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
