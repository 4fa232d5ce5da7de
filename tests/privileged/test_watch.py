"""`vethtrace watch` on the real seed lab, read off a real terminal (tmux).

A private tmux server (its own socket) runs watch at 120x40 over the lab's two
namespaces while a ping fails in the lab; capture-pane must show the diverted
ARP reply (veth0 → br0). Then `q` (and, in a second run, Ctrl-C) must end it
with the terminal restored (icanon back on) and nothing left: no watch process,
no BPF program held by it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.bpf_progs import held_prog_ids
from tests.conftest import VENV_BIN, new_prefix
from tests.labs import lab_fixture
from tests.tmux import Tmux
from vethtrace.lab import BuiltLab

pytestmark = pytest.mark.privileged

seed_lab = lab_fixture("seed")


@contextmanager
def watch_in_tmux(lab: BuiltLab) -> Iterator[Tmux]:
    cmd = (
        f"{VENV_BIN}/vethtrace watch -n {lab.ns('host')} -n {lab.ns('song')}; "
        "echo EXIT=$?; stty -a | tr ' ;' '\\n\\n' | grep -x -- '-*icanon'; sleep 60"
    )
    t = Tmux(f"vethtrace-{new_prefix()}", cmd)
    try:
        yield t
    finally:
        t.kill()


def _loaded(prog_id: int) -> bool:
    out = subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True)
    return out.returncode == 0


def _watch_pid(t: Tmux) -> int:
    rows = [pid for pid, args in t.children() if "vethtrace watch" in args]
    assert rows, t.children()
    return rows[0]


def _assert_gone(t: Tmux, pid: int, progs: set[int]) -> None:
    screen = t.wait_for(lambda s: "EXIT=" in s, 15, "watch to exit")
    assert "EXIT=0" in screen, screen
    lines = [line.strip() for line in screen.splitlines()]
    assert "icanon" in lines and "-icanon" not in lines, "terminal left in cbreak mode"
    assert not [p for p, args in t.children() if "vethtrace" in args]
    assert not os.path.exists(f"/proc/{pid}")
    assert not [i for i in progs if _loaded(i)], "BPF programs outlived watch"


def _forget_song(host: str) -> None:
    """Drop host's neighbour entry for song, so the next ping sends an ARP request
    at once. On seed it never resolves: an earlier test's entry, still INCOMPLETE,
    would queue the ping behind its last probe and then turn FAILED without
    another request (with cached probes, watch is tracing within ~0.1 s of that)."""
    subprocess.run(
        ["ip", "-n", host, "neigh", "flush", "to", "192.168.122.102", "nud", "all"], check=True
    )


def test_watch_shows_the_diverted_arp_reply_and_quits_on_q(seed_lab: BuiltLab) -> None:
    host = seed_lab.ns("host")
    with watch_in_tmux(seed_lab) as t:
        t.wait_for(lambda s: " tracing " in s, 40, "probes to attach")
        pid = _watch_pid(t)
        progs = held_prog_ids(pid)
        assert progs and all(_loaded(i) for i in progs)  # attached while it runs
        _forget_song(host)
        subprocess.run(
            ["ip", "netns", "exec", host, "ping", "-c", "2", "-W", "1", "192.168.122.102"],
            capture_output=True,
            timeout=20,
        )
        screen = t.wait_for(
            lambda s: any("veth0 → br0" in ln and "diverted to br0" in ln for ln in s.splitlines()),
            15,
            "the diverted ARP reply",
        )
        row = next(ln for ln in screen.splitlines() if "diverted to br0" in ln)
        assert "ARP reply 192.168.122.102" in row and "song/veth1 → host/veth0 → br0" in row
        topo_row = next(ln for ln in screen.splitlines() if "└ veth0" in ln)
        assert "192.168.122.101/24" in topo_row and "⇄ song/veth1" in topo_row
        assert "lost 0" in screen.splitlines()[0]
        assert "address-on-bridge-port" in screen or "is a port of br" in screen
        t.tmux("send-keys", "-t", "w", "q")
        _assert_gone(t, pid, progs)


def test_ctrl_c_also_quits_cleanly(seed_lab: BuiltLab) -> None:
    with watch_in_tmux(seed_lab) as t:
        t.wait_for(lambda s: " tracing " in s, 40, "probes to attach")
        pid = _watch_pid(t)
        progs = held_prog_ids(pid)
        assert progs
        t.tmux("send-keys", "-t", "w", "C-c")
        _assert_gone(t, pid, progs)


def test_without_a_terminal_watch_streams_trace_lines(seed_lab: BuiltLab) -> None:
    host, song = seed_lab.ns("host"), seed_lab.ns("song")
    proc = subprocess.Popen(
        [f"{VENV_BIN}/vethtrace", "watch", "arp", "-n", host, "-n", song, "--duration", "8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        started = ""
        while "tracing" not in started:  # trace's status line, on stderr when piped
            line = proc.stderr.readline()
            assert line, f"watch ended before tracing: {proc.stdout.read() if proc.stdout else ''}"
            started += line
        _forget_song(host)
        subprocess.run(
            ["ip", "netns", "exec", host, "ping", "-c", "1", "-W", "1", "192.168.122.102"],
            capture_output=True,
            timeout=20,
        )
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["TIME(s)", "NETNS", "IFACE", "POINT", "WHAT"]
    assert any(host in ln and "br0" in ln and "ARP reply 192.168.122.102" in ln for ln in lines)
    assert "\x1b[" not in out  # plain lines, no screen control
