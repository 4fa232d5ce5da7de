"""Discovery split across two processes (capture's fork path) against the
in-process path, on the same namespaces: the same Topology, the same notes, and
a clean fallback when the child dies or stalls."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import new_prefix
from vethtrace import netns
from vethtrace.model import Topology, to_dict
from vethtrace.topology import build, capture, fork
from vethtrace.topology.namespaces import NsRef, enumerate_namespaces

pytestmark = pytest.mark.privileged

LEAVES = 24


def ip_batch(lines: list[str], ns: str | None = None) -> None:
    cmd = ["ip", "-batch", "-"] if ns is None else ["ip", "-n", ns, "-batch", "-"]
    subprocess.run(cmd, input="\n".join(lines) + "\n", text=True, check=True)


def quiet(name: str) -> None:
    """No IPv6 in the namespace: no DAD, router or MLD frames that would change
    neighbours and the FDB between two discoveries we compare (the lab stays
    silent: no traffic, no multicast)."""

    def write() -> None:
        for conf in ("all", "default"):
            with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w") as f:
                f.write("1")

    netns.run_in(name, write)


@pytest.fixture(scope="module")
def lab() -> Iterator[str]:
    """A hub namespace with a bridge and LEAVES namespaces, each a veth pair to it
    (addresses on both sides): the shape bench/topo.py measures, small."""
    p = new_prefix()
    hub = f"{p}hub"
    try:
        ip_batch([f"netns add {hub}"] + [f"netns add {p}n{i}" for i in range(LEAVES)])
        for name in [hub] + [f"{p}n{i}" for i in range(LEAVES)]:
            quiet(name)
        # multicast off: fewer IGMP reports (they leave neighbour entries behind)
        hub_lines = ["link add br0 type bridge", "link set br0 multicast off up"]
        hub_lines.append("addr add 10.71.0.1/16 dev br0")
        for i in range(LEAVES):
            hub_lines += [
                f"link add h{i} type veth peer name eth0 netns {p}n{i}",
                f"link set h{i} master br0 multicast off up",
            ]
        ip_batch(hub_lines, hub)
        for i in range(LEAVES):
            leaf = [f"addr add 10.71.1.{i + 1}/16 dev eth0", "link set eth0 multicast off up"]
            ip_batch(leaf, f"{p}n{i}")
        settle(p)
        yield p
    finally:
        names = [n for n in os.listdir("/run/netns") if n.startswith(p)]
        subprocess.run(
            ["ip", "-batch", "-"], input="".join(f"netns del {n}\n" for n in names), text=True
        )


def settle(p: str) -> None:
    """Wait until every interface but lo is operationally up: the kernel reports
    carrier changes through linkwatch, up to a second late, and we compare two
    discoveries made a moment apart."""
    for _ in range(100):
        _cap, topo = discover_refs(refs_of(p), fork=False)
        if all(i.oper_state == "UP" for ns in topo.namespaces for i in ns.interfaces
               if i.kind != "loopback"):  # fmt: skip
            return
        time.sleep(0.05)
    raise AssertionError("lab interfaces did not come up")


def refs_of(p: str) -> list[NsRef]:
    return [r for r in enumerate_namespaces([]) if r.name.startswith(p)]


def discover_refs(refs: list[NsRef], fork: bool) -> tuple[capture.RawCapture, Topology]:
    """What discover() does, on these namespaces only, forked or not."""
    cap = capture.capture(
        refs,
        nsid_pairs=lambda c: build.nsid_queries(build.parse_links(c)),
        decode=build.decode,
        fork=fork,
    )
    return cap, build.build(cap)


def comparable(topo: Topology) -> dict:
    doc = to_dict(topo)
    del doc["taken_at"]
    return doc


def assert_same_as_in_process(topo: Topology, before: Topology, refs: list[NsRef]) -> None:
    """The forked result equals an in-process discovery made just before it, or
    (should the kernel have added something meanwhile: a late IGMP report's
    neighbour entry, say) one made just after it."""
    if comparable(topo) != comparable(before):
        _cap, after = discover_refs(refs, fork=False)
        assert comparable(topo) == comparable(after)


def slow_parent(parent: int) -> None:
    """Called in each dump: holds the parent back, so that the child surely takes
    a share of the queue however late the scheduler starts it."""
    if os.getpid() == parent:
        time.sleep(0.005)


@pytest.fixture
def pids_file(tmp_path, monkeypatch) -> Iterator[str]:
    """Every dump_here() call appends the pid of the process that made it."""
    path = str(tmp_path / "pids")
    real = capture.dump_here

    parent = os.getpid()

    def logged(*args, **kw):
        slow_parent(parent)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        return real(*args, **kw)

    monkeypatch.setattr(capture, "dump_here", logged)
    yield path


def dumpers(path: str) -> dict[int, int]:
    out: dict[int, int] = {}
    with open(path) as f:
        for line in f:
            out[int(line)] = out.get(int(line), 0) + 1
    return out


def test_forked_discovery_equals_in_process(lab: str, pids_file: str) -> None:
    refs = refs_of(lab)
    assert len(refs) == LEAVES + 1
    cap_in, topo_in = discover_refs(refs, fork=False)
    assert not cap_in.forked and set(dumpers(pids_file)) == {os.getpid()}
    os.unlink(pids_file)
    cap_fork, topo_fork = discover_refs(refs, fork=True)
    assert cap_fork.forked
    by_pid = dumpers(pids_file)
    assert len(by_pid) == 2 and sum(by_pid.values()) == LEAVES + 1  # both took a share
    assert_same_as_in_process(topo_fork, topo_in, refs)
    assert cap_fork.nsids == cap_in.nsids
    # every veth end found its peer across namespaces, whoever dumped it
    hub = topo_fork.netns_by_name(f"{lab}hub")
    assert hub is not None
    veths = [i for i in hub.interfaces if i.kind == "veth"]
    assert len(veths) == LEAVES and all(i.peer is not None for i in veths)
    for i in range(LEAVES):
        leaf = topo_fork.netns_by_name(f"{lab}n{i}")
        assert leaf is not None
        eth0 = leaf.iface_by_name("eth0")
        assert eth0 is not None and eth0.peer is not None and eth0.peer.netns == hub.inode
        assert [a.cidr for a in eth0.addresses if a.family == 4] == [f"10.71.1.{i + 1}/16"]


def test_forked_vanished_and_stale_namespaces_become_notes(lab: str) -> None:
    """Namespaces deleted between enumeration and capture, and a /run/netns entry
    that is no namespace (setns fails in whichever process takes it): notes, in
    the forked path as in-process."""
    p = new_prefix()
    gone = [f"{p}gone{i}" for i in range(3)]
    stale = [f"/run/netns/{p}stale{i}" for i in range(3)]
    ip_batch([f"netns add {n}" for n in gone])
    try:
        for path in stale:
            open(path, "w").close()
        refs = refs_of(lab) + refs_of(p)
        refs.sort(key=lambda r: r.name)  # interleave them with the lab's namespaces
        ip_batch([f"netns del {n}" for n in gone])
        cap, topo = discover_refs(refs, fork=True)
    finally:
        subprocess.run(["ip", "-batch", "-"], input="".join(f"netns del {n}\n" for n in gone),
                       text=True, capture_output=True)  # fmt: skip
        for path in stale:
            os.unlink(path)
    assert cap.forked
    for name in gone:
        assert any(name in n and "vanished" in n for n in cap.notes)
    for path in stale:
        name = os.path.basename(path)
        assert f"netns {name}: cannot enter (not a namespace: a stale entry?)" in cap.notes
    assert len(cap.notes) == 6 and len(cap.gone) == 6
    assert len(topo.namespaces) == LEAVES + 1


def test_child_that_dies_falls_back(lab: str, monkeypatch) -> None:
    """A child that exits mid-way: what it took is dumped here, nothing is lost."""
    parent = os.getpid()
    real = capture.dump_here
    calls = iter(range(1_000_000))

    def dying(*args, **kw):
        slow_parent(parent)
        if os.getpid() != parent and next(calls) == 2:
            os._exit(3)  # after sending two namespaces, while holding a third
        return real(*args, **kw)

    refs = refs_of(lab)
    _cap, expected = discover_refs(refs, fork=False)
    monkeypatch.setattr(capture, "dump_here", dying)
    cap, topo = discover_refs(refs, fork=True)
    assert not cap.forked
    assert_same_as_in_process(topo, expected, refs)


def test_child_that_stalls_is_killed(lab: str, tmp_path, monkeypatch) -> None:
    parent = os.getpid()
    real = capture.dump_here
    pid_file = tmp_path / "child"

    def stalling(*args, **kw):
        slow_parent(parent)
        if os.getpid() != parent:
            pid_file.write_text(str(os.getpid()))
            time.sleep(600)
        return real(*args, **kw)

    refs = refs_of(lab)
    _cap, expected = discover_refs(refs, fork=False)
    monkeypatch.setattr(capture, "dump_here", stalling)
    monkeypatch.setattr(fork, "CHILD_TIMEOUT", 1.0)
    t0 = time.monotonic()
    cap, topo = discover_refs(refs, fork=True)
    assert time.monotonic() - t0 < 10
    assert not cap.forked
    assert_same_as_in_process(topo, expected, refs)
    child = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # killed and reaped


def test_fork_only_from_a_single_thread() -> None:
    """ping and watch discover while their own threads run: no fork there."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: never forks")
    assert fork.fork_pays(fork.FORK_MIN_NAMESPACES)
    assert not fork.fork_pays(fork.FORK_MIN_NAMESPACES - 1)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert not fork.fork_pays(10 * fork.FORK_MIN_NAMESPACES)
    finally:
        stop.set()
        t.join()
