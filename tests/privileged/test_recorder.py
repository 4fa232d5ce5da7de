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


def _shift(ns: str, dev: str, step: int, count: int = 200) -> None:
    """One net change of `dev`'s addresses that no re-read can miss or cancel:
    its set is replaced by one it never had (step k -> 10.x.y.1..count, distinct
    for every k below 16 000), in one `ip -batch`. A flap (add, then flush back
    to nothing) is not that: a re-read after the flush finds what the previous
    one found, writes nothing, and the recording grew only when a re-read
    happened to land between the two (what made these tests depend on timing)."""
    base = f"10.{64 + step // 250 % 64}.{step % 250}"
    batch = f"addr flush dev {dev}\n" + "".join(
        f"addr add {base}.{i + 1}/32 dev {dev}\n" for i in range(count)
    )
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True, check=True,
                   capture_output=True, timeout=30)  # fmt: skip


def _snapshot_weight() -> int:
    """What a segment's opening snapshot weighs now: every namespace on the
    machine (other work's included) is in it, so limits are sized from it."""
    return len(json.dumps(to_dict(discover()), separators=(",", ":")))


def test_rotation_by_size_keeps_the_newest(prefix: str, tmp_path: Path) -> None:
    """Rotation is driven by our own namespace's changes only: each _shift is at
    least one change record of ~200 addresses (tens of KiB), so the directory
    outgrows --max-size after a bounded number of shifts whatever else is on the
    host; the loop runs until the first segment is pruned and three more
    segments exist (the deadline is a safety net, not the condition)."""
    ns = f"{prefix}flap"
    directory = tmp_path / "rec"
    estimate = _snapshot_weight()
    max_size = 3 * estimate + (1 << 20)  # room for >= 3 segments beside 1 MiB of changes
    segment_size = 16 << 10
    ip("netns", "add", ns)
    try:
        ip("-n", ns, "link", "add", "a0", "type", "veth", "peer", "name", "b0")
        limits = ("--max-size", str(max_size), "--segment-size", str(segment_size))
        with recorder(directory, "--no-drops", *limits) as p:
            snapshot = _size(directory)  # the first segment: header + opening snapshot
            deadline = time.monotonic() + 180
            shifts = 0
            while time.monotonic() < deadline:
                _shift(ns, "a0", shifts)
                shifts += 1
                time.sleep(0.2)  # quiet past the debounce (and the 0.1 s poll): a re-read each
                seqs = _seqs(directory)
                if seqs and seqs[0] > 1 and len(seqs) >= 3:
                    break
            written = _size(directory)
            ip("-n", ns, "addr", "flush", "dev", "a0")
            ip("-n", ns, "addr", "add", "10.99.99.99/32", "dev", "a0")  # the newest change
            _wait_written(directory, '"10.99.99.99"')
            stop(p)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    why = f"{shifts} shifts, snapshot {snapshot} B (estimated {estimate}), {written} B kept"
    seqs = _seqs(directory)
    assert 1 not in seqs, f"the oldest segment should be gone: {seqs}; {why}"
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), seqs  # the newest, contiguous
    # Pruning runs at every rotation (with the closed segment counted) and every
    # tick: whatever happens to the newest segment, the ones before it fit.
    sizes = [p.stat().st_size for p in segments(directory)]
    assert sum(sizes[:-1]) <= max_size, (sizes, max_size, why)
    # Each closed segment was rotated for its size: records past the snapshot
    # reached --segment-size (the age limit, 8 h by default, never hit here).
    for p in segments(directory)[:-1]:
        lines = p.read_text().splitlines()
        after = sum(len(ln) + 1 for ln in lines if json.loads(ln).get("type") != "topology")
        header = len(lines[0]) + 1
        assert after - header >= segment_size, (p.name, after, why)
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


def test_a_full_disk_stops_writing_says_so_and_keeps_the_newest(
    prefix: str, tmp_path: Path
) -> None:
    """A small tmpfs, mounted in a mount namespace of the recorder's own (the
    machine's mounts are untouched), filled by the recorder itself: it says it
    stopped, keeps running, frees its oldest segment and records the newest change.
    The tmpfs is sized from what a snapshot weighs (at least 512 KiB, room for
    three snapshots and a few segments), and filled by _shift: each is at least
    one change record of tens of KiB, whatever else is on the host."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    ns = f"{prefix}full"
    fs_size = max(512 << 10, 3 * _snapshot_weight() + 4 * (64 << 10))
    fs_size = (fs_size + 4095) // 4096 * 4096
    ip("netns", "add", ns)
    script = (
        f"mount -t tmpfs -o size={fs_size} vtt-full {mnt} && exec {VENV_BIN / 'vethtrace'} "
        f"record --continuous {mnt}/rec --no-drops --max-size 64M --min-free 0 "
        f"--segment-size 64K"
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
        # Shifts until the disk filled and a retry made room (RETRY_S = 5 s after
        # it stopped); the deadline is a safety net, not the condition.
        deadline = time.monotonic() + 180
        shifts = 0
        while time.monotonic() < deadline and not any("resumed" in s for s in said):
            _shift(ns, "f0", shifts)
            shifts += 1
            time.sleep(0.2)  # quiet past the debounce (and the 0.1 s poll): a re-read each
        why = f"{shifts} shifts into {fs_size} B: {said}"
        assert any("stopped writing" in s for s in said), why
        assert any("resumed" in s for s in said), why
        assert proc.poll() is None, why  # still running
        seen = Path(f"/proc/{proc.pid}/root") / str(mnt).lstrip("/") / "rec"
        # New changes until one is in the recording: one made while the disk is
        # full again (a new segment's snapshot may fill it) is counted, not kept.
        ip("-n", ns, "addr", "flush", "dev", "f0")
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
