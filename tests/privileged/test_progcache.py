"""The on-disk cache of compiled probes: a cached start loads the very programs
bcc compiled (same events for the same traffic), a broken cache falls back to
compiling, and nothing stays loaded once the collector is closed."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.bpf_progs import held_prog_ids, loaded_prog_ids
from tests.labs import lab_fixture
from vethtrace.collect import progcache
from vethtrace.collect.bpf import BpfCollector
from vethtrace.lab import BuiltLab
from vethtrace.netns import inode_of

pytestmark = pytest.mark.privileged


lab = lab_fixture("bridge-two")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(progcache, "CACHE_DIR", tmp_path)
    return tmp_path


def _ping(lab: BuiltLab) -> None:
    subprocess.run(
        ["ip", "netns", "exec", lab.ns("a"), "ping", "-n", "-q", "-c1", "-W1", "10.0.0.2"],
        capture_output=True,
        check=True,
    )


def _one_ping(lab: BuiltLab, cache_hit: bool) -> list[tuple[str, str, int]]:
    """What one echo request/reply produces, with ARP already resolved (so that
    every run sees the same packets)."""
    _ping(lab)
    inodes = [inode_of(lab.ns(n)) for n in ("a", "sw", "b")]
    with BpfCollector("icmp", inodes) as col:
        col.start()
        assert col.from_cache is cache_hit
        _ping(lab)
        time.sleep(0.1)
        events = col.poll(50) + col.drain()
        assert col.lost == 0
    return sorted((e.point, e.ifname, e.packet.icmp_type if e.packet else -1) for e in events)


def test_cached_programs_see_what_compiled_ones_see(lab: BuiltLab, cache: Path) -> None:
    compiled = _one_ping(lab, cache_hit=False)
    assert list(cache.glob("probes-*.json")), "nothing was cached after a compile"
    cached = _one_ping(lab, cache_hit=True)
    assert ("netif_receive_skb", "eth0", 0) in compiled  # the echo reply, back in a
    assert cached == compiled


def test_broken_cache_falls_back_to_compiling(lab: BuiltLab, cache: Path) -> None:
    _one_ping(lab, cache_hit=False)
    for path in cache.glob("probes-*.json"):
        path.write_text(path.read_text().replace('"insns": "', '"insns": "ff'))  # bad code
    assert _one_ping(lab, cache_hit=False)  # the verifier refused it: compiled again
    assert _one_ping(lab, cache_hit=True)  # and the fresh compile was cached


def test_cache_hit_leaves_nothing_loaded(lab: BuiltLab, cache: Path) -> None:
    _one_ping(lab, cache_hit=False)
    before = held_prog_ids(os.getpid())
    col = BpfCollector("icmp", [inode_of(lab.ns(n)) for n in ("a", "sw", "b")])
    col.start()
    assert col.from_cache
    ours = held_prog_ids(os.getpid()) - before
    assert len(ours) >= 10
    col.close()
    time.sleep(0.2)
    assert not (ours & loaded_prog_ids())


def test_perf_buffer_is_not_cached(lab: BuiltLab, cache: Path) -> None:
    with BpfCollector("icmp", [inode_of(lab.ns("a"))], perf_buffer=True) as col:
        col.start()
        assert not col.from_cache
    assert not list(cache.glob("probes-*.json"))


def _events(lab: BuiltLab, flt: str, scope: list[str] | None) -> tuple[bool, list]:
    """(loaded from the cache?, events of one ping a -> b) with this filter and scope."""
    _ping(lab)
    inodes = [inode_of(lab.ns(n)) for n in scope] if scope is not None else None
    with BpfCollector(flt, inodes) as col:
        col.start()
        _ping(lab)
        time.sleep(0.1)
        events = col.poll(50) + col.drain()
        return col.from_cache, events


def test_new_filter_or_scope_does_not_recompile(lab: BuiltLab, cache: Path) -> None:
    """The filter and the -n scope are map data: after one compile, runs with
    other filters and scopes load the same cached file (nothing new is
    written) and each still sees exactly what its filter and scope allow."""
    hit, first = _events(lab, "icmp", ["a", "sw", "b"])
    assert not hit and first
    files = sorted(cache.glob("probes-*.json"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    b_ino = inode_of(lab.ns("b"))

    hit, only_b = _events(lab, "icmp and host 10.0.0.2", ["b"])
    assert hit
    assert only_b and {e.netns for e in only_b} == {b_ino}
    assert all(e.packet is None or e.packet.ip_proto == 1 for e in only_b)

    hit, udp = _events(lab, "udp port 53", ["a", "b"])
    assert hit
    assert not [e for e in udp if e.packet is not None], "a ping passed `udp port 53`"

    lab_inodes = {inode_of(lab.ns(n)) for n in ("a", "sw", "b")}
    hit, unfiltered = _events(lab, "", ["a", "sw", "b"])
    assert hit and {e.netns for e in unfiltered} == lab_inodes
    hit, unscoped = _events(lab, "icmp and host 10.0.0.2", None)
    assert hit and lab_inodes <= {e.netns for e in unscoped}

    assert sorted(cache.glob("probes-*.json")) == files
    assert files[0].stat().st_mtime_ns == stamp  # not even rewritten


def test_prepare_caches_every_command_s_probe_set(cache: Path) -> None:
    """What set-up runs (`doctor --prepare`): afterwards each command's set
    loads from the cache with any filter, and a second prepare compiles nothing."""
    from vethtrace.collect.prepare import VARIANTS, prepare

    done = prepare()
    assert [p.variant for p in done] == list(VARIANTS)
    assert len(list(cache.glob("probes-*.json"))) == len(VARIANTS)
    assert all(p.from_cache for p in prepare())
    for opts in VARIANTS.values():
        with BpfCollector("tcp port 443 or arp", [1], **opts) as col:
            col.start()
            assert col.from_cache


def test_scope_grows_while_tracing(lab: BuiltLab, cache: Path) -> None:
    """A namespace added to -n while tracing (watch: re-created under its
    name) is traced from then on, without a new compile or attach."""
    _ping(lab)
    a_ino, b_ino = inode_of(lab.ns("a")), inode_of(lab.ns("b"))
    with BpfCollector("icmp", [a_ino]) as col:
        col.start()
        _ping(lab)
        time.sleep(0.1)
        before = {e.netns for e in col.poll(50) + col.drain()}
        col.add_netns([b_ino])
        _ping(lab)
        time.sleep(0.1)
        after = {e.netns for e in col.poll(50) + col.drain()}
    assert before == {a_ino}
    assert after == {a_ino, b_ino}
