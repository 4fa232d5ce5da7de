"""`trace` as people run it for minutes: what it says about a ping's replies,
namespaces that vanish, loss while it happens, its deadline under a flood and
the pcapng it writes (issue #20, the trace/watch half)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN
from tests.labs import built_lab
from vethtrace.netns import inode_of

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


def read_json_lines(text: str) -> tuple[list[dict], list[dict]]:
    """(events, notices) of a --json stream: notices carry a "type"."""
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in rows if "type" not in r], [r for r in rows if "type" in r]


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


def test_vanished_namespaces_are_said_at_once_and_trace_ends(prefix: str, tmp_path: Path) -> None:
    """Issue #20: trace kept running silently when its namespaces were deleted."""
    x, y = f"{prefix}x", f"{prefix}y"
    rec_path = tmp_path / "gone.vtrec"
    try:
        for ns in (x, y):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", x, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                       check=True)  # fmt: skip
        with tracing("-n", x, "-n", y, "--json", "--duration", "30", "--write",
                     str(rec_path)) as proc:  # fmt: skip
            time.sleep(1.0)
            subprocess.run(["ip", "-n", x, "link", "del", "v0"], check=True)
            time.sleep(1.5)
            subprocess.run(["ip", "netns", "del", x], check=True)
            time.sleep(1.0)
            assert proc.poll() is None  # y is still traced
            gone = time.monotonic()
            subprocess.run(["ip", "netns", "del", y], check=True)
            out, err = proc.communicate(timeout=20)
            ended = time.monotonic() - gone
    finally:
        for ns in (x, y):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    assert proc.returncode == 1, err
    assert ended < 2.0, f"trace ran {ended:.1f} s after its last namespace vanished"
    _, notices = read_json_lines(out)
    changes = [(n["change"], n["netns"], n.get("interface"), n["left"]) for n in notices]
    assert ("iface-gone", x, "v0", [x, y]) in changes and ("iface-gone", x, "v1", [x, y]) in changes
    assert ("netns-gone", x, None, [y]) in changes and ("netns-gone", y, None, []) in changes
    assert all(n["type"] == "scope" and n["time"].endswith("Z") for n in notices)
    assert f"namespace {x} vanished" in err and "nothing left to trace" in err
    from vethtrace.record import read

    rec = read(rec_path)
    assert [(n["change"], n["netns"]) for n in rec.notices if n["change"] == "netns-gone"] == [
        ("netns-gone", x),
        ("netns-gone", y),
    ]
    assert rec.complete


def test_wait_keeps_tracing_when_the_scope_is_gone(prefix: str) -> None:
    x = f"{prefix}w"
    try:
        subprocess.run(["ip", "netns", "add", x], check=True)
        with tracing("-n", x, "--wait", "--duration", "4") as proc:
            started = time.monotonic()
            subprocess.run(["ip", "netns", "del", x], check=True)
            _, err = proc.communicate(timeout=20)
    finally:
        subprocess.run(["ip", "netns", "del", x], capture_output=True, check=False)
    assert proc.returncode == 0, err
    assert time.monotonic() - started > 3.0  # ran to its duration
    assert f"namespace {x} vanished" in err and "nothing left" not in err


def _flood(ns: str, ip: str, seconds: float) -> subprocess.Popen[bytes]:
    """ping -f between our own namespaces, bounded in time (-w)."""
    return subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-f", "-q", "-w",
                             str(int(seconds)), ip], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


def test_loss_is_a_record_when_it_happens(prefix: str, tmp_path: Path) -> None:
    """A one-page ring buffer (--buffer 4) under a ping flood loses events for
    sure: a `lost` record appears in --json and in the recording, and stderr
    warns while it happens (not only in the summary)."""
    rec_path = tmp_path / "loss.vtrec"
    with built_lab("bridge-two", prefix) as lab:
        a = lab.ns("a")
        with tracing("icmp", "-n", a, "--json", "--buffer", "4", "--duration", "3",
                     "--write", str(rec_path)) as proc:  # fmt: skip
            flood = _flood(a, "10.0.0.2", 2)
            out, err = proc.communicate(timeout=30)
            flood.wait(timeout=10)
    assert proc.returncode == 0, err
    events, notices = read_json_lines(out)
    lost = [n for n in notices if n["type"] == "lost"]
    assert lost and events, err
    assert all(n["lost"] > 0 and n["total"] >= n["lost"] for n in lost)
    total = lost[-1]["total"]
    assert f"{total} lost" in err.replace(",", "")  # the summary agrees with the records
    assert "events lost" in err.split(" events in ")[0]  # warned before the summary
    assert len([ln for ln in err.splitlines() if "events lost" in ln]) <= 5  # rate-limited
    # a notice comes in the stream where it happened, among the events
    first = out.splitlines().index(next(ln for ln in out.splitlines() if '"type":"lost"' in ln))
    assert first < len(out.splitlines()) - 1
    from vethtrace.record import read

    rec = read(rec_path)
    assert [n["total"] for n in rec.notices if n["type"] == "lost"] == [n["total"] for n in lost]
    assert rec.lost == total


def test_deadline_holds_under_a_flood(prefix: str, tmp_path: Path) -> None:
    """Issue #20: --duration 8 ran 11.5 s under a flood. Every packet event of
    two namespaces on a ping flood, printed: the run ends within 0.2 s of its
    deadline (measured from the "tracing…" line, which is printed when the
    clock starts, to the summary), not counting the time the kernel kept it
    waiting for a CPU after the deadline (/proc/PID/schedstat): on a loaded machine the
    tail after the deadline (a 512-record drain, detaching, the summary) is a
    few ms of work that took 0.3-1 s of wall time behind other runnable tasks
    (measured: detaching 13 raw tracepoints takes ~1 ms), while the bug this
    guards against (printing the flood's backlog) is seconds of running."""
    out_path = tmp_path / "out.txt"
    with built_lab("bridge-two", prefix) as lab:
        a, b = lab.ns("a"), lab.ns("b")
        with out_path.open("w") as out:
            proc = subprocess.Popen([str(VENV_BIN / "vethtrace"), "trace", "-n", a, "-n", b,
                                     "--duration", "3"],
                                    stdout=out, stderr=subprocess.PIPE, text=True)  # fmt: skip
            assert proc.stderr is not None
            floods: list[subprocess.Popen[bytes]] = []
            try:
                line = ""
                while "tracing" not in line:
                    line = proc.stderr.readline()
                    assert line or proc.poll() is None
                ready = time.monotonic()
                at_deadline: list[float] = []  # its waiting so far, when the deadline passes
                timer = threading.Timer(3.0, lambda: at_deadline.append(_run_delay(proc.pid)))
                timer.start()
                # Flooding from now on, not from the spawn: on a loaded machine
                # attaching took longer than an 8 s flood started with it (the
                # trace then saw 4-19 packets and the test said "no flood seen").
                floods = [_flood(a, "10.0.0.2", 8), _flood(b, "10.0.0.1", 8)]
                ended = None
                for line in proc.stderr:
                    if " events in " in line:
                        ended = time.monotonic()
                        timer.join()  # (a late timer subtracts less: stricter)
                        waited = _run_delay(proc.pid) - at_deadline[0]
                proc.wait(timeout=30)
            finally:
                for f in floods:
                    f.kill()
                    f.wait()
    assert ended is not None and proc.returncode == 0
    lines = out_path.read_text().count("\n")
    assert lines > 1000, "no flood seen"
    ran = ended - ready
    assert ran - waited < 3.2, (
        f"ran {ran:.2f} s for --duration 3, {waited:.2f} s of it waiting for a CPU ({lines} lines)"
    )


def _run_delay(pid: int) -> float:
    """Seconds the process's main thread has spent runnable but not running
    (second field of /proc/PID/schedstat; a zombie keeps it until reaped)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def test_pcap_has_every_matching_frame_with_its_interface(prefix: str, tmp_path: Path) -> None:
    pcap = tmp_path / "trace.pcapng"
    with built_lab("bridge-two", prefix) as lab:
        a, b, sw = lab.ns("a"), lab.ns("b"), lab.ns("sw")
        with tracing("icmp", "-n", a, "-n", b, "-n", sw, "--pcap", str(pcap),
                     "--duration", "4") as proc:  # fmt: skip
            assert netns_exec(a, "ping", "-c2", "-i0.2", "-W1", "10.0.0.2").returncode == 0
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    fields = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-e", "frame.interface_name",
         "-e", "frame.interface_description", "-e", "icmp.type", "-e", "arp.opcode"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [line.split("\t") for line in fields.splitlines()]
    names = {r[0] for r in rows}
    # the request and reply seen in a, on both bridge ports, and in b
    assert {f"{a}/eth0", f"{b}/eth0", f"{sw}/veth-a", f"{sw}/veth-b"} <= names, names
    assert all(r[2] in ("0", "8") and not r[3] for r in rows), rows  # FILTER: ICMP only
    assert all("inode" in r[1] and "ifindex" in r[1] for r in rows)
    per_iface = {n: sum(1 for r in rows if r[0] == n) for n in names}
    assert all(count >= 4 for count in per_iface.values()), per_iface  # 2 requests + 2 replies
    assert "frames written to" in err


@pytest.mark.parametrize("width", [100, 80])
def test_trace_lines_fit_the_terminal(prefix: str, width: int) -> None:
    """Issue #20: `trace icmp` lines were ~107 characters and wrapped mid-word
    in a 100-column terminal. In tmux at 100 and 80 columns every event is one
    screen row that starts with its time."""
    from tests.tmux import Tmux

    with built_lab("bridge-two", prefix) as lab:
        a = lab.ns("a")
        term = Tmux(f"{prefix}tmux", f"{VENV_BIN / 'vethtrace'} trace icmp -n {a} "
                    f"--duration 6; sleep 30", width=width, height=50)  # fmt: skip
        try:
            term.wait_for(lambda s: "tracing" in s, 30, "tracing")
            assert netns_exec(a, "ping", "-c2", "-i0.2", "-W1", "10.0.0.2").returncode == 0
            screen = term.wait_for(lambda s: " events in " in s, 30, "the summary")
        finally:
            term.kill()
    rows = screen.splitlines()
    start = next(i for i, r in enumerate(rows) if r.strip().startswith("TIME"))
    end = next(i for i, r in enumerate(rows) if " events in " in r)
    events = [r for r in rows[start + 1 : end] if r.strip()]
    assert len(events) >= 8, screen  # 2 requests + 2 replies, several points each
    for row in events:
        assert len(row) <= width
        assert row.split()[0].replace(".", "").isdigit(), f"wrapped or cut row: {row!r}"
    assert any("echo req" in r for r in events), screen
    assert ("echo req id" in screen) is (width >= 90), screen  # ids where they fit


def test_wait_traces_a_namespace_recreated_under_its_name(prefix: str) -> None:
    """--wait over a namespace deleted and re-created: the new one (another inode:
    a filler namespace takes the freed number first) joins the probes' scope (map
    data), so a ping inside it is traced."""
    x, filler = f"{prefix}r", f"{prefix}f"
    try:
        subprocess.run(["ip", "netns", "add", x], check=True)
        with tracing("-n", x, "--wait", "--duration", "8", "--json", "icmp") as proc:
            old = inode_of(x)
            subprocess.run(["ip", "netns", "del", x], check=True)
            time.sleep(1.2)  # the scope watch looks every 0.5 s: "vanished" first
            subprocess.run(["ip", "netns", "add", filler], check=True)
            subprocess.run(["ip", "netns", "add", x], check=True)
            subprocess.run(["ip", "-n", x, "link", "set", "lo", "up"], check=True)
            time.sleep(1.2)  # ... then "back", and traced
            netns_exec(x, "ping", "-c", "3", "-i", "0.2", "127.0.0.1")
            out, err = proc.communicate(timeout=30)
        new_inode = inode_of(x)
    finally:
        for ns in (x, filler):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    assert proc.returncode == 0, err
    assert new_inode != old  # else the probes' scope held it already
    events, notices = read_json_lines(out)
    back = [n for n in notices if n.get("change") == "netns-back"]
    assert back and back[0]["traced"] is True and back[0]["inode"] == new_inode, notices
    assert "traced" in err
    assert any(e["netns"] == new_inode for e in events), f"{len(events)} events, none in {x}"
