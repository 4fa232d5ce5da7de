"""Sniffers in namespaces: bound inside their own namespace, scoped by
(netns inode, ifindex), never confused by equal names; nothing left running."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest

from vethtrace import netns
from vethtrace.collect.sniff import SnifferSet, Target

pytestmark = pytest.mark.privileged


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def pair(prefix: str):
    """Two namespaces joined by a veth pair whose ends are BOTH called eth0."""
    a, b = prefix + "a", prefix + "b"
    sh("ip", "netns", "add", a)
    sh("ip", "netns", "add", b)
    try:
        sh("ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "eth0", "netns", b)
        sh("ip", "-n", a, "addr", "add", "10.77.0.1/24", "dev", "eth0")
        sh("ip", "-n", b, "addr", "add", "10.77.0.2/24", "dev", "eth0")
        sh("ip", "-n", a, "link", "set", "eth0", "up")
        sh("ip", "-n", b, "link", "set", "eth0", "up")
        sh("ip", "-n", b, "link", "add", "down0", "type", "veth", "peer", "down1")
        yield a, b
    finally:
        sh("ip", "netns", "del", a)
        sh("ip", "netns", "del", b)


def target(ns: str, name: str) -> Target:
    idx = netns.run_in(ns, lambda: socket.if_nametoindex(name))
    return Target(ns, netns.inode_of(ns), name, idx)


def test_frames_are_attributed_to_the_right_namespace(pair) -> None:
    a, b = pair
    before = set(threading.enumerate())
    fds = len(os.listdir("/proc/self/fd"))
    ta, tb = target(a, "eth0"), target(b, "eth0")
    wrong = Target(b, tb.netns_inode, "eth0", tb.ifindex + 100)  # stale ifindex
    down = target(b, "down0")
    sset = SnifferSet([ta, tb, wrong, down])
    # from here on frames may arrive (IPv6 DAD/MLD of the fresh links, not just our ping)
    t0 = time.monotonic_ns()
    sset.start()
    assert len(sset.sniffers) == 2
    assert any("expected" in f and "renamed" in f for f in sset.failed), sset.failed
    assert any("down0 is down" in f for f in sset.failed), sset.failed
    sh("ip", "netns", "exec", a, "ping", "-c1", "-W1", "10.77.0.2")
    frames = sset.stop()
    t1 = time.monotonic_ns()
    seen = {(f.event.netns, f.event.extra["direction"], f.event.packet.kind) for f in frames}
    assert (ta.netns_inode, "outgoing", "arp-request") in seen
    assert (tb.netns_inode, "incoming", "arp-request") in seen
    assert (tb.netns_inode, "outgoing", "echo-reply") in seen
    assert (ta.netns_inode, "incoming", "echo-reply") in seen
    for f in frames:
        assert f.event.source == "sniff" and f.event.ifname == "eth0"
        assert f.netns in (a, b)
        # converted from the socket's wall clock to the kernel's monotonic clock
        assert t0 - 5_000_000 <= f.event.ts_ns <= t1
    assert not sset.sniffers
    assert set(threading.enumerate()) <= before
    assert len(os.listdir("/proc/self/fd")) <= fds
