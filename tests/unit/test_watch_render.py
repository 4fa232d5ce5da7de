"""The watch screen drawn at a fixed size on a recording console.

The state comes from the real recording of the seed lab in samples/recordings
(made by `vethtrace ping --write` on kernel 6.18), replayed through the same
correlate code `watch` runs live."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from vethtrace.correlate import correlate
from vethtrace.model import (
    Address,
    IfaceKey,
    Interface,
    Namespace,
    PacketSummary,
    ProbeEvent,
    Topology,
)
from vethtrace.record import read
from vethtrace.render.live import render
from vethtrace.render.live_state import (
    SPARK_SECONDS,
    WatchState,
    diff_topology,
    replay,
)

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "recordings"


def draw(state: WatchState, width: int = 120, height: int = 40) -> str:
    console = Console(
        width=width, height=height, record=True, file=io.StringIO(), force_terminal=True
    )
    with state.lock:
        console.print(render(state, now_wall=state.wall(state.now_ns)))
    return console.export_text()


def _row(screen: str, *needles: str) -> str:
    rows = [line for line in screen.splitlines() if all(n in line for n in needles)]
    assert rows, f"no row with {needles} in:\n{screen}"
    return rows[0]


@pytest.fixture(scope="module")
def seed_state() -> WatchState:
    return replay(read(SAMPLES / "seed.vtrec"), correlate)


@pytest.mark.parametrize("width", [120, 100])
def test_seed_recording_shows_the_diverted_arp_reply(seed_state: WatchState, width: int) -> None:
    screen = draw(seed_state, width=width)
    lines = screen.splitlines()
    assert len(lines) == 40 and all(len(line) == width for line in lines)
    # The ARP reply from song arrives on veth0 and is handed up to br0.
    row = _row(screen, "ARP reply", "veth0 → br0")
    assert "diverted to br0" in row
    assert "song/" in row.split("ARP reply")[1]  # the chain starts in song
    # Meanwhile the echo request waits in veth0's ARP queue (ping stopped at the
    # verdict, before the entry turned FAILED): nothing was dropped yet, and
    # nothing consumed it either (issue #20: it showed "consumed").
    row = _row(screen, "ICMP echo", "host/veth0")
    assert "queued for ARP" in row and "consumed" not in row
    assert "no drops" in screen
    # The topology panel shows veth0 as a port of br0, holding the address.
    assert "192.168.122.101/24" in _row(screen, "veth0", "⇄")
    assert "bridge, 1 port" in _row(screen, "br0", "bridge")
    # The static finding that explains it.
    assert "address-on-bridge-port" in screen or "in vt-host holds 192.168.122.101/24" in screen


def test_counters_and_drops_come_from_the_events(seed_state: WatchState) -> None:
    topo = seed_state.topology
    assert topo is not None
    host = next(ns for ns in topo.namespaces if ns.name.endswith("host"))
    veth0 = host.iface_by_name("veth0")
    br0 = host.iface_by_name("br0")
    assert veth0 is not None and br0 is not None
    c0, cb = seed_state.counters[veth0.key], seed_state.counters[br0.key]
    assert c0.rx >= 1 and c0.tx >= 1  # requests out, replies in
    assert cb.rx >= 1 and cb.tx == 0  # br0 got the replies, sent nothing
    assert not seed_state.drops  # the run stopped at the verdict, before NEIGH_FAILED
    assert seed_state.lost == 0


def test_seed_fixed_recording_shows_no_diversion() -> None:
    state = replay(read(SAMPLES / "seed-fixed.vtrec"), correlate)
    screen = draw(state)
    assert "diverted" not in screen.split("packet paths")[1].split("q quit")[0]
    # The echo reply comes in the same way as in the broken stage, and is taken by
    # br0's stack, which now owns the address: consumed there (by ping's socket).
    assert "✓ consumed" in _row(screen, "ICMP echo reply", "song/veth1 → host/veth0 → br0")
    # Every answered root ping is freed as NO_SOCKET at ping_rcv: benign, not a drop.
    assert "NO_SOCKET" not in state.drops


# --- pure logic on small hand-made states ---------------------------------------------

H, S = 4026531001, 4026531002


def _iface(ns: int, idx: int, name: str, kind: str, **kw) -> Interface:
    return Interface(
        key=IfaceKey(ns, idx), name=name, kind=kind, admin_up=True, oper_state="UP",
        carrier=True, mtu=1500, **kw,
    )  # fmt: skip


def _topo(ip_on_bridge: bool, extra: bool = False) -> Topology:
    host_addr = [Address("192.168.122.101", 24)]
    host = [
        _iface(H, 2, "br0", "bridge", addresses=host_addr if ip_on_bridge else []),
        _iface(H, 3, "veth0", "veth", master=2, peer=IfaceKey(S, 2),
               addresses=[] if ip_on_bridge else host_addr),
    ]  # fmt: skip
    if extra:
        host.append(_iface(H, 9, "veth9", "veth", peer_state="missing"))
    song = [_iface(S, 2, "veth1", "veth", peer=IfaceKey(H, 3),
                   addresses=[Address("192.168.122.102", 24)])]  # fmt: skip
    return Topology(
        namespaces=[
            Namespace(inode=H, name="vtx-host", interfaces=host),
            Namespace(inode=S, name="vtx-song", interfaces=song),
        ]
    )


REPLY = PacketSummary(
    ethertype=0x0806, arp_op=2, arp_sha="9e:00:00:00:00:02",
    arp_spa="192.168.122.102", arp_tpa="192.168.122.101",
)  # fmt: skip


def _reply_events(t: int) -> list[ProbeEvent]:
    """The reply's way in, as the notes measured it: veth1 tx, veth0 rx, br0 rx."""
    skb, head = 0xFFFF8880_0000_1000, 0xFFFF8880_0000_2000
    return [
        ProbeEvent(t, "net_dev_queue", S, 2, "veth1", skb=skb, head=head, packet=REPLY),
        ProbeEvent(t + 1, "net_dev_start_xmit", S, 2, "veth1", skb=skb, head=head, packet=REPLY),
        ProbeEvent(t + 2, "netif_rx", H, 3, "veth0", skb=skb, head=head, packet=REPLY),
        ProbeEvent(t + 3, "netif_receive_skb", H, 3, "veth0", skb=skb, head=head, packet=REPLY),
        ProbeEvent(t + 4, "netif_receive_skb", H, 2, "br0", skb=skb, head=head, packet=REPLY),
        ProbeEvent(t + 5, "consume_skb", H, 2, "br0", skb=skb, head=head, location="arp_process"),
    ]


def _state(topo: Topology) -> WatchState:
    state = WatchState(correlate=correlate)
    state.set_topology(topo, [])
    for ev in _reply_events(5_000_000_000):
        state.add_event(ev)
    state.refresh_paths()
    return state


def test_reply_for_the_ports_address_is_diverted() -> None:
    state = _state(_topo(ip_on_bridge=False))
    assert [p.outcome for p in state.paths] == ["diverted"]
    assert "diverted to br0" in _row(draw(state), "ARP reply", "song/veth1 → host/veth0 → br0")


def test_reply_for_the_bridges_address_is_not_diverted() -> None:
    state = _state(_topo(ip_on_bridge=True))
    assert [p.outcome for p in state.paths] == ["consumed"]
    assert "diverted" not in _row(draw(state), "ARP reply")


def test_appearing_and_vanishing_interfaces_are_noticed() -> None:
    state = _state(_topo(ip_on_bridge=False))
    changes = state.set_topology(_topo(ip_on_bridge=False, extra=True), [])
    assert changes == ["+ vtx-host/veth9 appeared"]
    smaller = _topo(ip_on_bridge=False)
    smaller.namespaces.pop()  # song is gone
    assert state.set_topology(smaller, []) == [
        "- netns vtx-song vanished",
        "- vtx-host/veth9 vanished",
    ]
    screen = draw(state)
    assert "- netns vtx-song vanished" in screen and "veth9 vanished" in screen
    # Counters of interfaces that vanished are forgotten (their ifindex may come back).
    assert IfaceKey(S, 2) not in state.counters
    assert diff_topology(smaller, smaller) == []


def test_memory_stays_bounded_under_a_flood() -> None:
    state = WatchState(correlate=correlate, window=500)
    state.set_topology(_topo(ip_on_bridge=False), [])
    for i in range(20_000):
        t = 1_000_000_000 * (i // 500)  # 40 seconds of traffic
        state.add_event(ProbeEvent(t + i, "netif_receive_skb", H, 3, "veth0", skb=i, head=i))
    state.refresh_paths()
    assert len(state.window) == 500
    counters = state.counters[IfaceKey(H, 3)]
    assert counters.rx == 20_000
    assert len(counters.per_second) <= SPARK_SECONDS + 4
    assert len(state.paths) <= state.max_paths


def test_narrow_and_short_terminals_still_draw() -> None:
    state = _state(_topo(ip_on_bridge=False))
    for width, height in ((80, 24), (100, 30), (200, 60)):
        lines = draw(state, width, height).splitlines()
        assert len(lines) == height and all(len(line) == width for line in lines)


def test_events_of_a_recycled_inode_are_not_shown_under_n() -> None:
    """With -n, only the watched namespaces count: once one is deleted, the
    kernel may hand its inode to a stranger's new namespace."""
    state = WatchState(netns=["vtx-host", "vtx-song"], correlate=correlate)
    state.set_topology(_topo(ip_on_bridge=False), [])
    smaller = _topo(ip_on_bridge=False)
    smaller.namespaces.pop()  # vtx-song deleted; its inode S may come back as another netns
    state.set_topology(smaller, [])
    for ev in _reply_events(5_000_000_000):
        state.add_event(ev)
    assert state.foreign == 2  # veth1's two events in the recycled inode
    assert IfaceKey(S, 2) not in state.counters
    assert state.counters[IfaceKey(H, 3)].rx == 1


def test_sparklines_after_30_s_at_steady_rates_tell_the_rates_apart() -> None:
    """Issue #20: at a steady rate each row saturated to full blocks (scaled to
    its own maximum). One scale for the visible window keeps a busy interface
    and a quiet one apart, and says the scale in the column header."""
    state = WatchState(correlate=None)
    state.set_topology(_topo(ip_on_bridge=False), [])
    start = (state.now_ns // 1_000_000_000 - 30) * 1_000_000_000
    for second in range(30):
        base = start + second * 1_000_000_000
        for i in range(1000):  # veth0 receives 1000 frames/s
            state.add_event(ProbeEvent(base + i * 1000, "netif_receive_skb", H, 3, "veth0"))
        for i in range(100):  # veth1 receives 100 frames/s
            state.add_event(ProbeEvent(base + i * 1000, "netif_receive_skb", S, 2, "veth1"))
    state.now_ns = start + 30 * 1_000_000_000 - 1  # the last full second shown
    screen = draw(state)
    busy, quiet = _row(screen, "192.168.122.101"), _row(screen, "192.168.122.102")
    assert "█" in busy
    assert "█" not in quiet and "▂" in quiet, quiet
    assert "≤1,000" in screen


def test_a_path_without_hops_is_stamped_with_its_time_not_boot_time() -> None:
    """Issue #20: a row stamped with the boot time (a monotonic 0 converted)."""
    from vethtrace.model import PacketPath

    state = _state(_topo(ip_on_bridge=False))
    now = state.now_ns
    echo = PacketSummary(ip_src="192.168.122.101", ip_dst="192.168.122.102", ip_proto=1,
                         icmp_type=8, icmp_id=1, icmp_seq=9)  # fmt: skip
    state.paths.append(PacketPath(kind="echo", hops=[], outcome="consumed", summary=echo,
                                  first_ns=now))  # fmt: skip
    row = _row(draw(state), "#9")
    expected = state.clock.clock_text(now)
    assert row.split()[1] == expected, row


def test_loss_while_it_happens_is_in_the_header_in_red() -> None:
    state = _state(_topo(ip_on_bridge=False))
    assert "LOSING EVENTS" not in draw(state).splitlines()[0]
    state.set_lost(1234)
    console = Console(width=120, height=40, record=True, file=io.StringIO(), force_terminal=True)
    with state.lock:
        console.print(render(state, now_wall=state.wall(state.now_ns)))
    header = console.export_text(styles=True).splitlines()[0]
    assert "LOSING EVENTS  lost 1,234" in header and "\x1b[1;37;41m" in header
    state.lost_at = (state.lost_at or 0) - 10  # three seconds on: lost, still red, no banner
    assert "LOSING" not in draw(state).splitlines()[0]
