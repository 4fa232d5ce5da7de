"""The flight recorder on the real kernel: `record --continuous` runs while namespaces
are built and broken with `ip` (independent of vethtrace's code), then
`report DIR` is read back as nobody.

- the seed broken step by step (address on veth0, then veth0 enslaved to br0):
  the report shows the address, then the enslavement, then NEIGH_FAILED drops
  on veth0 "from then on", in that order; `--at` a moment between the steps
  finds nothing, after them it finds address-on-bridge-port;
- rotation by size keeps the newest segments (and the newest change);
- SIGTERM leaves complete segments; SIGKILL a readable one, and a restart
  continues in the same directory ("recorder restarted");
- namespaces created and deleted while it runs are followed (changes inside
  a new namespace are recorded, then its vanishing).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, as_nobody
from vethtrace.model import to_dict
from vethtrace.recorder.segments import read_dir
from vethtrace.recorder.store import segments
from vethtrace.topology import discover

pytestmark = pytest.mark.privileged
ENV = {**os.environ, "COLUMNS": "200", "TERM": "dumb"}


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def ping(ns: str, addr: str, count: int = 1) -> bool:
    cmd = ["ip", "netns", "exec", ns, "ping", "-n", "-q", f"-c{count}", "-i0.3", "-W1", addr]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0


@contextmanager
def recorder(directory: Path, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """`vethtrace record --continuous DIR`, started and ready (it says so on stderr)."""
    proc = subprocess.Popen(
        [str(VENV_BIN / "vethtrace"), "record", "--continuous", str(directory), *extra],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=ENV,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "recording to" in line, line + proc.stderr.read()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def report(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    os.chmod(directory, 0o755)
    for p in directory.iterdir():
        os.chmod(p, 0o644)
    return subprocess.run(
        [*as_nobody(), str(VENV_BIN / "vethtrace"), "report", str(directory), *args],
        capture_output=True, text=True, env=ENV, timeout=120,
    )  # fmt: skip


def report_json(directory: Path, *args: str) -> dict:
    out = report(directory, "--json", *args)
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def two_namespaces(prefix: str) -> Iterator[tuple[str, str]]:
    host, song = f"{prefix}host", f"{prefix}song"
    ip("netns", "add", host)
    ip("netns", "add", song)
    try:
        yield host, song
    finally:
        for ns in (host, song):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_seed_broken_step_by_step_shows_the_change_then_the_drops(
    two_namespaces: tuple[str, str], tmp_path: Path
) -> None:
    host, song = two_namespaces
    directory = tmp_path / "rec"
    with recorder(directory) as proc:
        ip("-n", host, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
           "netns", song)  # fmt: skip
        ip("-n", host, "link", "add", "br0", "type", "bridge")
        ip("-n", host, "link", "set", "br0", "up")
        ip("-n", song, "addr", "add", "192.168.122.102/24", "dev", "veth1")
        ip("-n", song, "link", "set", "veth1", "up")
        ip("-n", host, "link", "set", "veth0", "up")
        time.sleep(1.0)
        ip("-n", host, "addr", "add", "192.168.122.101/24", "dev", "veth0")
        assert ping(host, "192.168.122.102")  # step 1: works
        time.sleep(1.5)
        between = time.time()
        time.sleep(1.0)
        ip("-n", host, "link", "set", "veth0", "master", "br0")
        ip("-n", host, "neigh", "flush", "dev", "veth0")
        assert not ping(host, "192.168.122.102", count=4)  # step 2: broken
        _wait_failed(host, "192.168.122.102")  # the queued echo requests are dropped then
        time.sleep(2.5)  # the drops' second is over and written
        after = time.time()
        stop(proc)

    got = report_json(directory, "--since", "5m", "-n", host)
    lines = [ln["line"] for ln in got["timeline"]]
    added = _index(lines, f"{host}: address 192.168.122.101/24 added on veth0")
    enslaved = _index(lines, f"{host}: veth0 enslaved to br0")
    drops = _index(lines, "drops on veth0: NEIGH_FAILED")
    assert added < enslaved < drops, "\n".join(lines)
    enslave = got["timeline"][enslaved]
    assert enslave["after"].get("NEIGH_FAILED", 0) >= 1, enslave
    assert "from then on" in enslave["line"]
    assert got["drops"]["total"] >= 1

    text = report(directory, "--since", "5m", "-n", host)
    assert text.returncode == 1, text.stderr  # drops in the window
    assert "veth0 enslaved to br0 — from then on" in text.stdout

    ok = report_json(directory, "--since", "5m", "--at", f"@{between}", "-n", host)
    assert not [f for f in ok["check"]["findings"] if f["rule"] == "address-on-bridge-port"]
    bad = report_json(directory, "--since", "5m", "--at", f"@{after}", "-n", host)
    rules = {(f["rule"], f["interface"]) for f in bad["check"]["findings"]}
    assert ("address-on-bridge-port", "veth0") in rules, rules


def _wait_failed(ns: str, addr: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["ip", "-n", ns, "neigh", "show", addr], capture_output=True,
                             text=True).stdout  # fmt: skip
        if "FAILED" in out:
            return
        time.sleep(0.2)
    raise AssertionError(f"{addr} never FAILED in {ns}: {out}")


def _index(lines: list[str], text: str) -> int:
    for i, line in enumerate(lines):
        if text in line:
            return i
    raise AssertionError(f"{text!r} not in the timeline:\n" + "\n".join(lines))


# On an idle host with few namespaces the flaps did not outgrow the limits within
# the deadline (seen once); with many namespaces they do. Not strict until fixed.
IDLE_HOST = pytest.mark.xfail(strict=False, reason="data rate depends on the host's namespaces")


@IDLE_HOST
def test_rotation_by_size_keeps_the_newest(prefix: str, tmp_path: Path) -> None:
    """Limits sized to this machine: each segment opens with a snapshot of every
    namespace on it (other work's included), which is what rotation writes."""
    ns = f"{prefix}flap"
    directory = tmp_path / "rec"
    snapshot = len(json.dumps(to_dict(discover()), separators=(",", ":")))
    max_size = max(1 << 20, 3 * snapshot + (1 << 20))
    ip("netns", "add", ns)
    try:
        ip("-n", ns, "link", "add", "a0", "type", "veth", "peer", "name", "b0")
        limits = ("--max-size", str(max_size), "--segment-size", "16K")
        with recorder(directory, "--no-drops", *limits) as p:
            deadline = time.monotonic() + 60
            flaps = 0
            while time.monotonic() < deadline:
                batch = "".join(f"addr add 10.77.{flaps % 250}.{i + 1}/32 dev a0\n"
                                for i in range(100))  # fmt: skip
                subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True,
                               check=True, capture_output=True)  # fmt: skip
                ip("-n", ns, "addr", "flush", "dev", "a0")
                flaps += 1
                time.sleep(0.1)
                if _size(directory) > 1.3 * max_size and 1 not in _seqs(directory):
                    break
            ip("-n", ns, "addr", "add", "10.99.99.99/32", "dev", "a0")  # the newest change
            time.sleep(2.5)  # re-read and written (or taken by a rotation's snapshot)
            stop(p)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    seqs = _seqs(directory)
    assert 1 not in seqs, f"the oldest segment should be gone: {seqs}"
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), seqs  # the newest, contiguous
    slack = 2 * snapshot + 4 * (64 << 10) + 400_000  # the segment being written, and a tick's
    assert _size(directory) <= max_size + slack, (_size(directory), max_size, snapshot)
    # The newest state is kept: the topology as recorded at the end has the last address.
    topo = read_dir(str(directory), since=time.time() - 600).topology_at(time.time())
    space = topo.netns_by_name(ns)
    assert space is not None
    a0 = space.iface_by_name("a0")
    assert a0 is not None and [a.address for a in a0.addresses] == ["10.99.99.99"]


def _wait_written(directory: Path, text: str, timeout: float = 30.0) -> None:
    """Until a segment holds `text` (changes are flushed at once; a busy
    recorder may still be re-reading the flood before it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in segments(directory):
            with contextlib.suppress(FileNotFoundError):
                if text in p.read_text():
                    return
        time.sleep(0.3)
    raise AssertionError(f"{text!r} never written")


def _seqs(directory: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in segments(directory)] if directory.exists() else []


def _size(directory: Path) -> int:
    total = 0
    for p in segments(directory) if directory.exists() else []:
        with contextlib.suppress(FileNotFoundError):  # pruned by the recorder meanwhile
            total += p.stat().st_size
    return total


def test_sigterm_leaves_a_complete_recording_and_a_restart_continues(
    prefix: str, tmp_path: Path
) -> None:
    directory = tmp_path / "rec"
    ns = f"{prefix}r"
    ip("netns", "add", ns)
    try:
        with recorder(directory, "--no-drops") as p:
            ip("-n", ns, "link", "add", "x0", "type", "veth", "peer", "name", "y0")
            time.sleep(1.0)
            p.kill()  # no end record
            p.wait(10)
        with recorder(directory, "--no-drops") as p:
            ip("-n", ns, "link", "set", "x0", "up")
            time.sleep(1.0)
            stop(p)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    segs = segments(directory)
    assert len(segs) == 2
    last = segs[-1].read_text().splitlines()
    assert json.loads(last[-1])["type"] == "end"  # SIGTERM: closed properly
    assert json.loads(segs[0].read_text().splitlines()[-1])["type"] != "end"
    got = report_json(directory, "--since", "5m", "-n", ns)
    lines = [ln["line"] for ln in got["timeline"]]
    x0_added = _index(lines, "x0 added")
    assert x0_added < _index(lines, "recorder restarted") < _index(lines, "x0 set up")
    assert _index(lines, "recorder stopped without closing") < _index(lines, "recorder restarted")


def test_namespaces_created_and_deleted_during_the_run_are_followed(
    prefix: str, tmp_path: Path
) -> None:
    directory = tmp_path / "rec"
    names = [f"{prefix}churn{i}" for i in range(3)]
    with recorder(directory, "--no-drops") as p:
        try:
            for ns in names:
                ip("netns", "add", ns)
                time.sleep(0.6)  # found by the next scan, subscribed
                ip("-n", ns, "link", "add", "c0", "type", "veth", "peer", "name", "c1")
                ip("-n", ns, "addr", "add", "10.55.0.1/24", "dev", "c0")
                time.sleep(0.3)
                ip("-n", ns, "link", "set", "c0", "up")
                time.sleep(0.3)
                ip("netns", "del", ns)
            time.sleep(1.0)
            stop(p)
        finally:
            for ns in names:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for ns in names:
        got = report_json(directory, "--since", "5m", "-n", ns)
        lines = [ln["line"] for ln in got["timeline"]]
        appeared = _index(lines, f"{ns}: namespace appeared")
        assert appeared < _index(lines, f"{ns}: address 10.55.0.1/24 added on c0")
        assert _index(lines, f"{ns}: c0 set up") < _index(lines, f"{ns}: namespace vanished")


@IDLE_HOST
def test_a_full_disk_stops_writing_says_so_and_keeps_the_newest(
    prefix: str, tmp_path: Path
) -> None:
    """A 512 KiB tmpfs, mounted in a mount namespace of the recorder's own (the
    machine's mounts are untouched), filled by the recorder itself: it says it
    stopped, keeps running, frees its oldest segment and records the newest change."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    ns = f"{prefix}full"
    ip("netns", "add", ns)
    script = (
        f"mount -t tmpfs -o size=512k vtt-full {mnt} && exec {VENV_BIN / 'vethtrace'} record "
        f"--continuous {mnt}/rec --no-drops --max-size 64M --min-free 0 --segment-size 64K"
    )
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=ENV,
    )  # fmt: skip
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(iter(proc.stderr.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        ip("-n", ns, "link", "add", "f0", "type", "veth", "peer", "name", "g0")
        deadline = time.monotonic() + 60
        flaps = 0
        while time.monotonic() < deadline and not any("resumed" in s for s in said):
            for i in range(20):
                ip("-n", ns, "addr", "add", f"10.78.{flaps % 250}.{i + 1}/32", "dev", "f0")
            ip("-n", ns, "addr", "flush", "dev", "f0")
            flaps += 1
            time.sleep(0.1)
        assert any("stopped writing" in s for s in said), said
        assert any("resumed" in s for s in said), said
        assert proc.poll() is None, said  # still running
        seen = Path(f"/proc/{proc.pid}/root") / str(mnt).lstrip("/") / "rec"
        # New changes until one is in the recording: one made while the disk is
        # full again (a new segment's snapshot may fill it) is counted, not kept.
        newest = None
        for k in range(30):
            ip("-n", ns, "addr", "add", f"10.99.88.{k + 1}/32", "dev", "f0")
            time.sleep(1.0)
            out = subprocess.run(
                [str(VENV_BIN / "vethtrace"), "report", str(seen), "--since", "5m", "-n", ns,
                 "--json"], capture_output=True, text=True, env=ENV, timeout=60,
            )  # fmt: skip
            lines = [ln["line"] for ln in json.loads(out.stdout)["timeline"]]
            newest = next((ln for ln in reversed(lines) if "10.99.88." in ln), None)
            if newest:
                break
        assert newest and "added on f0" in newest, said
        seqs = _seqs(seen)
        assert seqs and seqs[0] > 1, seqs  # the oldest went to make room
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
