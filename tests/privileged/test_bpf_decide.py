"""Decide once per skb (vethtrace.h): a remembered verdict must never hide or
invent an event that reading the skb at every hook would give.

Two ways it could go wrong, each provoked here with matching datagrams
interleaved with non-matching traffic:

* bridge floods: br0 sends a clone (a new skb, same data buffer) to a port,
  and the original up to br0 itself; the clone's hooks must come out exactly
  as without the memory (the same traffic traced with VETHTRACE_DECIDE_MAP=off
  is the reference);
* skb reuse: a TCP flow beside the datagrams has its skbs freed where no
  tracepoint fires (__kfree_skb, kfree_skb_partial, the NAPI cache), so their
  addresses (and data buffers) come back for the next skbs with a verdict
  still remembered; every matching datagram must still appear at every hook.
  A memory trusted at every hook whatever the skb's stage lost 10-40 % of
  the datagrams here (both scopes), while the fast-path test still passed.
"""

from __future__ import annotations

import collections
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.labs import built_lab
from tests.privileged.test_bpf_fastpath import (
    SINK,
    _gather,
    assert_every_hook,
    hooks_per_datagram,
)
from vethtrace.collect.bpf import BpfCollector
from vethtrace.lab import BuiltLab
from vethtrace.model import ProbeEvent
from vethtrace.netns import inode_of

pytestmark = pytest.mark.privileged

MATCHING = 300

BROADCASTER = r"""
import socket, sys
n = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
for i in range(n):
    s.sendto(b"m%05d" % i, ("10.0.0.255", 7001))
    for _ in range(3):
        s.sendto(b"x", ("10.0.0.255", 7002))
"""

# a TCP server in b that reads and discards; a client in a that writes until
# killed: skbs freed without kfree_skb/consume_skb on both sides
TCP_SINK = r"""
import socket
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 7003))
srv.listen(1)
print("listening", flush=True)
c, _ = srv.accept()
while c.recv(65536):
    pass
"""
TCP_SOURCE = r"""
import socket
s = socket.create_connection(("10.0.0.2", 7003))
print("connected", flush=True)
buf = b"t" * 1400
while True:
    s.send(buf)
"""

# reads and discards what comes to 7001 and 7002, so their skbs are freed too
READER = r"""
import selectors, socket
sel = selectors.DefaultSelector()
for port in (7001, 7002):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    sel.register(s, selectors.EVENT_READ)
print("bound", flush=True)
while True:
    for key, _ in sel.select():
        key.fileobj.recv(2048)
"""

# datagrams to port 7001 as in the fast-path test, with fewer non-matching ones
# (the TCP flow is the non-matching traffic that matters here)
PACED = r"""
import socket, sys, time
dst, n = sys.argv[1], int(sys.argv[2])
hit = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
miss = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
hit.connect((dst, 7001))
miss.connect((dst, 7002))
for i in range(n):
    hit.send(b"m%05d" % i)
    miss.send(b"x")
    time.sleep(0.0005)
"""


def _run(ns: str, script: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
                   check=True, timeout=60)  # fmt: skip


@contextmanager
def _background(ns: str, script: str, ready: str) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", script],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout and proc.stdout.readline().strip() == ready
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _traced(lab: BuiltLab, scope: tuple[str, ...] | None, send: object) -> list[ProbeEvent]:
    """Events of the datagrams to port 7001 while send() runs, in this lab's
    namespaces (other tests on the machine may use the same port)."""
    inodes = [inode_of(lab.ns(k)) for k in scope] if scope is not None else None
    with BpfCollector("udp and dst port 7001", netns_inodes=inodes, areas=["dev"]) as col:
        col.start()
        send()  # type: ignore[operator]
        events = _gather(col, 1.0)
        assert col.lost == 0
    mine = set(_where(lab))
    return [e for e in events if e.netns in mine]


def _where(lab: BuiltLab) -> dict[int, str]:
    return {inode_of(lab.ns(k)): k for k in ("a", "sw", "b")}


def test_flood_clones_traced_as_without_memory(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Broadcast datagrams: br0 floods a clone to veth-b and passes one up to itself."""
    with built_lab("bridge-two", prefix) as lab, _background(lab.ns("b"), SINK, "bound"):
        runs = {}
        for memory in ("off", None):
            if memory:
                monkeypatch.setenv("VETHTRACE_DECIDE_MAP", memory)
            else:
                monkeypatch.delenv("VETHTRACE_DECIDE_MAP", raising=False)
            runs[memory] = _traced(lab, None, lambda: _run(lab.ns("a"), BROADCASTER, str(MATCHING)))
        where = _where(lab)
    shapes = {}
    for memory, events in runs.items():
        per_id = hooks_per_datagram(events, where)
        assert len(per_id) == MATCHING, memory
        counts = collections.Counter(tuple(sorted(h)) for h in per_id.values())
        assert len(counts) == 1, f"{memory}: datagrams took different paths: {counts}"
        shapes[memory] = next(iter(counts))
    assert shapes[None] == shapes["off"]
    # the flood made clones: at veth-b a datagram travels in another skb than at veth-a
    events = runs[None]
    rx = {e.packet.ip_id: e.skb for e in events if e.packet and e.point == "netif_receive_skb"
          and e.ifname == "veth-a"}  # fmt: skip
    tx = {e.packet.ip_id: e.skb for e in events if e.packet and e.point == "net_dev_queue"
          and e.ifname == "veth-b"}  # fmt: skip
    assert rx and all(tx[i] != rx[i] for i in rx), "no clone at veth-b"
    assert ("netif_receive_skb", "sw", "br0") in shapes[None]


@pytest.mark.parametrize("scope", [None, ("a", "b")], ids=["all-netns", "a+b"])
def test_reused_skbs_never_hide_a_datagram(prefix: str, scope: tuple[str, ...] | None) -> None:
    with built_lab("bridge-two", prefix) as lab:
        a, b = lab.ns("a"), lab.ns("b")
        subprocess.run(["ip", "netns", "exec", a, "ping", "-c1", "-W2", "10.0.0.2"],
                       capture_output=True, check=True)  # fmt: skip
        with _background(b, READER, "bound"), _background(b, TCP_SINK, "listening"), \
                _background(a, TCP_SOURCE, "connected"):  # fmt: skip
            events = _traced(lab, scope, lambda: _run(a, PACED, "10.0.0.2", str(MATCHING)))
        where = _where(lab)
    assert_every_hook(hooks_per_datagram(events, where), MATCHING, scope)
