"""SIGINT and SIGTERM at random (seeded) moments, from outside, the way a
person or a supervisor sends them, to `ping --write --pcap`, `trace --write`
and `lab up`. Whatever the moment: the process ends (130/143, or its normal
status if it had finished), at most one line about it, no traceback; the
files it was writing are valid (report reads the recording, tshark reads the
pcapng); nothing is left: no namespace of the lab's prefix (unless `up` had
completed and said so), no BPF program it held still loaded, no child process.

Runs are short (a ping to an address nobody answers, a 2 s trace) so the
whole table takes ~2 min on our 2-core machines."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bpf_progs import held_prog_ids, loaded_prog_ids, settle
from tests.conftest import VENV_BIN, new_prefix
from tests.labs import built_lab

pytestmark = pytest.mark.privileged

SEED = 20  # change it to explore other moments; failures print the delay and signal
RUNS = {"ping": 12, "trace": 9, "lab": 9}
EXE = str(VENV_BIN / "vethtrace")


def _plan() -> list[tuple[str, int, signal.Signals, float]]:
    rng = random.Random(SEED)
    span = {"ping": 1.6, "trace": 2.2, "lab": 0.9}
    out = []
    for kind, n in RUNS.items():
        for i in range(n):
            sig = rng.choice([signal.SIGINT, signal.SIGTERM])
            out.append((kind, i, sig, round(rng.uniform(0.0, span[kind]), 3)))
    return out


PLAN = _plan()


@pytest.fixture(scope="module")
def seed() -> Iterator:
    with built_lab("seed") as lab:
        yield lab


def _children(pid: int) -> set[int]:
    kids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.add(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _run(argv: list[str], sig: signal.Signals, delay: float, env: dict | None = None):
    """Start, watch what it holds, signal after `delay`, wait; (proc, out, err, progs, kids)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    progs: set[int] = set()
    kids: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            progs.update(held_prog_ids(proc.pid))
            kids.update(_children(proc.pid))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        done.set()
        watcher.join()
    return proc, out, err, progs, kids


_settle = settle


PACKAGE = str(Path(__file__).resolve().parents[2] / "vethtrace") + "/"


def _common(what: str, proc, err: str, progs: set[int], kids: set[int], sig) -> None:
    assert _settle(lambda: not (progs & loaded_prog_ids())), (what, "BPF programs left loaded")
    assert _settle(lambda: not any(_alive(k) for k in kids)), (what, "child processes left")
    if "KeyboardInterrupt" in err and PACKAGE not in err and not progs:
        return  # Python's own start-up, before any vethtrace code (test_startup_signal.py)
    assert "Traceback" not in err, (what, err)
    assert proc.returncode in (0, 1, 128 + sig, -sig), (what, proc.returncode, err)
    if proc.returncode == 128 + sig:
        said = [ln for ln in err.splitlines() if "interrupted" in ln or "terminated" in ln]
        assert len(said) <= 1, (what, err)  # none when it came during start-up


def _report_reads(path: Path) -> str:
    res = subprocess.run([EXE, "report", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode in (0, 1), (path, res.stderr)
    return res.stderr


def _tshark_reads(path: Path) -> None:
    res = subprocess.run(["tshark", "-r", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, (path, res.stderr)


@pytest.mark.parametrize(("kind", "i", "sig", "delay"), PLAN,
                         ids=[f"{k}-{i}-{s.name}-{d}s" for k, i, s, d in PLAN])  # fmt: skip
def test_interrupted_at_random(kind, i, sig, delay, seed, tmp_path: Path) -> None:
    what = f"{kind} {sig.name} after {delay} s"
    if kind == "ping":
        rec, pcap = tmp_path / "p.vtrec", tmp_path / "p.pcapng"
        # nobody holds .250: ARP goes unanswered, only the timeout would end it
        argv = [EXE, "ping", "--from", seed.ns("host"), seed.ns("song"), "192.168.122.250",
                "--timeout", "2", "--write", str(rec), "--pcap", str(pcap)]  # fmt: skip
        proc, out, err, progs, kids = _run(argv, sig, delay)
        _common(what, proc, err, progs, kids, sig)
        if not rec.exists():  # the signal came before ping opened its files
            assert proc.returncode != 0 and out == "", (what, out)
            if pcap.exists():
                _tshark_reads(pcap)
            return
        notes = _report_reads(rec)
        _tshark_reads(pcap)
        if proc.returncode == 128 + sig:
            assert f"the run was interrupted ({sig.name})" in notes, (what, notes)
    elif kind == "trace":
        rec = tmp_path / "t.vtrec"
        argv = [EXE, "trace", "icmp", "-n", seed.ns("host"), "--duration", "2",
                "--write", str(rec)]  # fmt: skip
        proc, _out, err, progs, kids = _run(argv, sig, delay)
        _common(what, proc, err, progs, kids, sig)
        if rec.exists():  # created once the probes are attached
            _report_reads(rec)
    else:
        prefix = new_prefix()
        env = dict(os.environ, VETHTRACE_LAB_PREFIX=prefix)
        proc, out, err, progs, kids = _run([EXE, "lab", "up", "seed"], sig, delay, env)
        _common(what, proc, err, progs, kids, sig)
        ours = sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix))
        if proc.returncode == 0:  # complete: kept, printed
            assert ours == [f"{prefix}host", f"{prefix}song"] and prefix in out, (what, out)
            subprocess.run([EXE, "lab", "down", "seed"], env=env, check=True, capture_output=True)
        else:  # interrupted before complete: rolled back
            assert proc.returncode != 0 and not ours, (what, proc.returncode, ours)
