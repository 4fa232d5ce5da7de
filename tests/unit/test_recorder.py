"""The flight recorder's pure parts: what a namespace diff says, how drops are
counted, how the store rotates and prunes, how a directory is read back into a
timeline and into the topology of a moment, and how times and sizes parse.
(The privileged tests run all of it on the real kernel: test_recorder.py.)"""

from __future__ import annotations

import copy
import itertools
import json
import time
from pathlib import Path

import pytest

from vethtrace.errors import UserError
from vethtrace.model import (
    Address,
    BridgePortInfo,
    FdbEntry,
    IfaceKey,
    Interface,
    Namespace,
    PacketSummary,
    ProbeEvent,
    Route,
    Topology,
    to_dict,
)
from vethtrace.recorder.diff import diff_namespace
from vethtrace.recorder.drops import DropCounter
from vethtrace.recorder.segments import read_dir
from vethtrace.recorder.store import SegmentStore, segments
from vethtrace.recorder.timeline import build
from vethtrace.recorder.when import parse_duration, parse_moment, parse_size

INODE = 4026532001


def _iface(idx: int, name: str, kind: str = "veth", **kw: object) -> Interface:
    base: dict = dict(admin_up=True, oper_state="UP", carrier=True, mtu=1500)
    base.update(kw)
    return Interface(key=IfaceKey(INODE, idx), name=name, kind=kind, **base)


def _host() -> Namespace:
    veth0 = _iface(5, "veth0", mac="aa:00:00:00:00:05",
                   addresses=[Address("192.168.122.101", 24)])  # fmt: skip
    br0 = _iface(3, "br0", "bridge", mac="aa:00:00:00:00:03")
    return Namespace(
        INODE, "vt-host", interfaces=[br0, veth0],
        routes=[Route("192.168.122.0/24", oif=5, prefsrc="192.168.122.101", scope="link")],
    )  # fmt: skip


def _texts(old: Namespace | None, new: Namespace) -> list[str]:
    return [c.text for c in diff_namespace(old, new)]


# --- diff ------------------------------------------------------------------------


def test_enslaving_a_port_is_said_in_words() -> None:
    old = _host()
    new = copy.deepcopy(old)
    veth0 = new.iface(5)
    assert veth0 is not None
    veth0.master = 3
    veth0.bridge_port = BridgePortInfo()
    assert _texts(old, new) == ["veth0 enslaved to br0"]
    assert _texts(new, old) == ["veth0 released from br0"]


def test_link_fields_addresses_routes_and_port_state() -> None:
    old = _host()
    old.iface(5).master = 3  # type: ignore[union-attr]
    old.iface(5).bridge_port = BridgePortInfo()  # type: ignore[union-attr]
    new = copy.deepcopy(old)
    v = new.iface(5)
    assert v is not None
    v.admin_up, v.mtu = False, 1400
    v.addresses = [Address("10.0.0.1", 8)]
    assert v.bridge_port is not None
    v.bridge_port.state = "blocking"
    new.routes = []
    got = _texts(old, new)
    assert "veth0 set down" in got
    assert "veth0 mtu 1500 -> 1400" in got
    assert "bridge port veth0 state forwarding -> blocking" in got
    assert "address 10.0.0.1/8 added on veth0" in got
    assert "address 192.168.122.101/24 removed from veth0" in got
    assert "route 192.168.122.0/24 dev veth0 removed" in got


def test_links_appearing_with_their_addresses_and_vanishing() -> None:
    old = _host()
    new = copy.deepcopy(old)
    new.interfaces.append(_iface(9, "c0", addresses=[Address("10.55.0.1", 24)]))
    new.interfaces = [i for i in new.interfaces if i.name != "br0"]
    got = _texts(old, new)
    assert got == ["c0 added (veth, up)", "br0 removed", "address 10.55.0.1/24 added on c0"]
    assert _texts(None, new) == ["namespace appeared (2 interfaces)"]


def test_what_the_kernel_adds_by_itself_is_not_a_change() -> None:
    old = _host()
    new = copy.deepcopy(old)
    v = new.iface(5)
    assert v is not None
    v.addresses.append(Address("fe80::1", 64, family=6, scope="link"))
    new.other_routes = [Route("192.168.122.101", kind="local", table=255),
                        Route("ff00::/8", kind="multicast", family=6, table=255)]  # fmt: skip
    new.fdb = [FdbEntry(5, "aa:00:00:00:00:05", flags=["permanent"]),  # the port's own MAC
               FdbEntry(5, "33:33:00:00:00:01", flags=["permanent"])]  # fmt: skip
    assert _texts(old, new) == []
    new.fdb.append(FdbEntry(5, "02:00:00:00:00:09", master=3))
    assert _texts(old, new) == ["fdb 02:00:00:00:00:09 on veth0 (learned) added"]


# --- drops -----------------------------------------------------------------------


def _drop(reason: str, where: str, ifname: str = "veth0", ts: int | None = None) -> ProbeEvent:
    return ProbeEvent(
        ts_ns=time.monotonic_ns() - 5_000_000_000 if ts is None else ts, point="kfree_skb",
        netns=INODE, ifindex=5, ifname=ifname, drop_reason=reason, location=f"{where}+0x1c",
        packet=PacketSummary(ip_src="192.168.122.101", ip_dst="192.168.122.102", ip_proto=1),
    )  # fmt: skip


def test_drops_are_counted_per_second_and_place_and_benign_ones_skipped() -> None:
    counter = DropCounter(lambda i: "vt-host")
    ts = time.monotonic_ns() - 5_000_000_000
    for _ in range(312):
        counter.add(_drop("NEIGH_FAILED", "neigh_invalidate", ts=ts))
    counter.add(_drop("NO_SOCKET", "ping_rcv", ts=ts))  # points.BENIGN_DROPS
    counter.add(_drop("NETFILTER_DROP", "nft_do_chain", "br0", ts=ts))
    consumed = ProbeEvent(ts_ns=ts, point="consume_skb", netns=INODE, ifindex=5, ifname="veth0")
    counter.add(consumed)
    recs = counter.flush()
    assert counter.benign == 1 and counter.drops == 313
    by = {(r["ifname"], r["reason"]): r for r in recs}
    assert by[("veth0", "NEIGH_FAILED")]["count"] == 312
    assert by[("veth0", "NEIGH_FAILED")]["location"] == "neigh_invalidate"
    assert by[("veth0", "NEIGH_FAILED")]["name"] == "vt-host"
    assert by[("veth0", "NEIGH_FAILED")]["sample"]["ip_dst"] == "192.168.122.102"
    assert by[("br0", "NETFILTER_DROP")]["count"] == 1
    assert counter.flush() == []


def test_the_current_second_is_held_until_it_is_over() -> None:
    counter = DropCounter(lambda i: "vt-host")
    counter.add(_drop("NEIGH_FAILED", "neigh_invalidate", ts=time.monotonic_ns()))
    assert counter.flush() == []
    assert len(counter.flush(everything=True)) == 1


# --- store -----------------------------------------------------------------------


def _store(directory: Path, **kw: object) -> SegmentStore:
    opts: dict = dict(
        max_size=1 << 20,
        max_age=None,
        min_free=0,
        snapshot=lambda: Topology(namespaces=[_host()], taken_at=time.time()),
    )
    opts.update(kw)  # fmt: skip
    return SegmentStore(directory, **opts)


def test_rotation_by_size_deletes_the_oldest_and_keeps_the_newest(tmp_path: Path) -> None:
    store = _store(tmp_path, max_size=64 << 10, segment_size=8 << 10, warn=lambda s: None)
    store.start()
    for i in range(3000):
        store.write("note", {"t": time.time(), "text": f"note {i:05d}"})
        if i % 50 == 0:
            store.tick()
    store.close()
    names = [p.name for p in segments(tmp_path)]
    assert names[0] != segments(tmp_path)[0].name or store.deleted
    assert store.deleted and store.deleted[0].startswith("seg-000001-")
    total = sum(p.stat().st_size for p in segments(tmp_path))
    assert total <= (64 << 10) + (16 << 10)
    last = segments(tmp_path)[-1].read_text().splitlines()
    assert '"note 02999"' in last[-2] and json.loads(last[-1])["type"] == "end"


def test_age_limit_and_restart_continue_the_sequence(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.start()
    store.close()
    first = segments(tmp_path)
    assert [p.name[:10] for p in first] == ["seg-000001"]
    old = time.time() - 7200
    import os

    os.utime(first[0], (old, old))
    again = _store(tmp_path, max_age=3600.0)
    again.start()
    again.tick()
    again.close()
    assert [p.name[:10] for p in segments(tmp_path)] == ["seg-000002"]


def test_one_recorder_per_directory(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(UserError, match="another recorder"):
        _store(tmp_path)
    store.close()


# --- reading back: timeline and topology at a moment -----------------------------


def _recorded(tmp_path: Path) -> tuple[Path, float]:
    """A directory as the recorder leaves it: address added, then enslaved, then drops."""
    store = _store(tmp_path)
    store.start()
    t0 = time.time()
    enslaved = copy.deepcopy(_host())
    enslaved.iface(5).master = 3  # type: ignore[union-attr]
    store.write("change", {"t": t0 + 1, "netns": INODE, "name": "vt-host", "action": "changed",
                           "changes": [{"kind": "link", "text": "veth0 enslaved to br0",
                                        "iface": "veth0"}],
                           "namespace": to_dict(enslaved)})  # fmt: skip
    for s in range(3):
        drops = {"t": float(int(t0) + 2 + s), "netns": INODE, "name": "vt-host",
                 "ifname": "veth0", "reason": "NEIGH_FAILED", "location": "neigh_invalidate",
                 "count": 104, "sample": None}  # fmt: skip
        store.write("drops", drops)
    store.write("drops", {"t": float(int(t0) - 1), "netns": 99, "name": "other", "ifname": "x",
                          "reason": "OTHERHOST", "location": "ip_rcv_core", "count": 1,
                          "sample": None})  # fmt: skip
    store.close()
    return tmp_path, t0


def test_timeline_puts_the_change_before_the_drops_that_followed(tmp_path: Path) -> None:
    directory, t0 = _recorded(tmp_path)
    rd = read_dir(str(directory))
    tl = build(rd, t0 - 60, t0 + 60, ["vt-host"])
    kinds = [(ln.kind, ln.text) for ln in tl.lines if ln.kind in ("change", "drops")]
    assert kinds == [("change", "veth0 enslaved to br0"),
                     ("drops", "NEIGH_FAILED at neigh_invalidate")]  # fmt: skip
    change = next(ln for ln in tl.lines if ln.kind == "change")
    assert change.after == {"NEIGH_FAILED": 312}
    run = next(ln for ln in tl.lines if ln.kind == "drops")
    assert run.count == 312 and run.until == float(int(t0) + 4)
    assert tl.drops == 312 and [p.netns for p in tl.places] == ["vt-host"]
    everything = build(rd, t0 - 60, t0 + 60, [])
    assert everything.drops == 313


def test_topology_at_a_moment_applies_the_changes_up_to_it(tmp_path: Path) -> None:
    directory, t0 = _recorded(tmp_path)
    rd = read_dir(str(directory))
    before = rd.topology_at(t0 + 0.5).netns(INODE)
    after = rd.topology_at(t0 + 1.5).netns(INODE)
    assert before is not None and after is not None
    assert before.iface(5).master is None  # type: ignore[union-attr]
    assert after.iface(5).master == 3  # type: ignore[union-attr]
    with pytest.raises(UserError, match="nothing recorded"):
        rd.topology_at(t0 - 3600)


def test_a_segment_cut_short_is_read_up_to_the_cut(tmp_path: Path) -> None:
    directory, t0 = _recorded(tmp_path)
    seg = segments(directory)[0]
    text = seg.read_text().splitlines()
    seg.write_text("\n".join(text[:-3]) + "\n" + text[-3][:20])  # no end, torn last drops
    rd = read_dir(str(directory))
    assert not rd.segments[0].complete
    assert build(rd, t0 - 60, t0 + 60, ["vt-host"]).drops == 208


def test_a_directory_without_segments_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no recorder segments"):
        read_dir(str(tmp_path))


# --- when ------------------------------------------------------------------------


def test_sizes_durations_and_moments() -> None:
    assert parse_size("100M") == 100 << 20 and parse_size("1GiB") == 1 << 30
    assert parse_size("4096") == 4096
    assert parse_duration("10m") == 600 and parse_duration("7d") == 7 * 86400
    now = 1_796_546_000.0
    assert parse_moment("10m", now) == now - 600
    assert parse_moment("@1796545000", now) == 1_796_545_000
    assert parse_moment("2026-12-06T08:00:00Z", now) == 1_796_544_000
    t = parse_moment("07:00", now)
    assert now - 86400 < t <= now
    for bad in ("ten minutes", "25:99:00", "M100"):
        with pytest.raises(UserError):
            parse_moment(bad, now)
    with pytest.raises(UserError):
        parse_size("lots")


# --- the loop: when a namespace is re-read, how its change is dated --------------


class _FakeTime:
    """The loop's clock, moved by hand (so deferral is tested without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_800_000_000.0 + self.now


def test_a_namespace_that_never_stops_changing_is_still_reread(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Notices every 20 ms keep the debounce from ever expiring: without a cap a
    flapping namespace would never be recorded (and its one late change would
    be dated by its first notice, long before)."""
    from vethtrace.collect.monitor import Notice
    from vethtrace.recorder import loop

    clock = _FakeTime()
    monkeypatch.setattr(loop, "time", clock)
    rec = loop.FlightRecorder(
        loop.Options(str(tmp_path), max_size=1 << 20, max_age=None, min_free=0), lambda s: None
    )
    reread: list[tuple[float, float]] = []  # (when, dated)
    monkeypatch.setattr(rec, "_reread", lambda inode, t: reread.append((clock.now, t)))
    for _ in range(100):  # 2 s of notices, drained every 20 ms
        rec._notices.put(Notice("dirty", INODE, "vt-flap", clock.time()))
        rec._drain_notices()
        clock.now += 0.02
    assert len(reread) >= 2000 // int(loop.MAX_DEFER_S * 1000) - 1, reread
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(reread)]
    assert max(gaps) <= loop.MAX_DEFER_S + 0.05, gaps
    # each re-read is dated by the first notice after the previous one
    assert all(w - (d - 1_800_000_000.0) <= loop.MAX_DEFER_S + 0.05 for w, d in reread)
    # and when the notices stop, the debounce re-reads once more, at once
    rec._notices.put(Notice("dirty", INODE, "vt-flap", clock.time()))
    rec._drain_notices()
    clock.now += loop.DEBOUNCE_S + 0.001
    n = len(reread)
    rec._drain_notices()
    assert len(reread) == n + 1


def test_a_change_is_never_dated_before_the_segment_it_is_written_in(tmp_path: Path) -> None:
    """A change first noticed before a rotation's snapshot but re-read after it
    goes into the new segment: dated before that segment's start, `topology_at`
    would skip it and the newest state would be lost."""
    from vethtrace.recorder.loop import FlightRecorder, Options

    rec = FlightRecorder(Options(str(tmp_path), 1 << 20, None, 0), lambda s: None)
    rec.store = _store(tmp_path)
    rec.store.start()
    started = rec.store.started
    assert abs(started - time.time()) < 60
    enslaved = copy.deepcopy(_host())
    enslaved.iface(5).master = 3  # type: ignore[union-attr]
    change = {"t": started - 5, "netns": INODE, "name": "vt-host", "action": "changed",
              "changes": [], "namespace": to_dict(enslaved)}  # fmt: skip
    rec._write("change", change)
    rec.store.close()
    now = read_dir(str(tmp_path)).topology_at(time.time()).netns(INODE)
    assert now is not None and now.iface(5).master == 3  # type: ignore[union-attr]
