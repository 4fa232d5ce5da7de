"""The recording format: round-trip, and one clear error for every way a file
can be broken (corrupt, truncated, wrong version, not a recording)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vethtrace.errors import UserError
from vethtrace.model import (
    Address,
    Finding,
    IfaceKey,
    Interface,
    Namespace,
    NeighChange,
    PacketSummary,
    ProbeEvent,
    Topology,
    Verdict,
)
from vethtrace.record import FORMAT, VERSION, Recorder, read


def _topology() -> Topology:
    veth0 = Interface(
        key=IfaceKey(4026532001, 5),
        name="veth0",
        kind="veth",
        admin_up=True,
        oper_state="UP",
        carrier=True,
        mtu=1500,
        mac="aa:00:00:00:00:01",
        master=3,
        peer=IfaceKey(4026532002, 2),
        addresses=[Address("192.168.122.101", 24)],
    )
    br0 = Interface(
        key=IfaceKey(4026532001, 3),
        name="br0",
        kind="bridge",
        admin_up=True,
        oper_state="UP",
        carrier=True,
        mtu=1500,
        bridge_stp=False,
    )
    return Topology(
        namespaces=[Namespace(inode=4026532001, name="vt-host", interfaces=[br0, veth0])],
        notes=["skipped pid:1 (permission denied)"],
        taken_at=1.5,
        kernel="6.18",
    )


def _events() -> list[ProbeEvent]:
    reply = PacketSummary(
        eth_src="aa:00:00:00:00:02",
        eth_dst="aa:00:00:00:00:01",
        ethertype=0x0806,
        arp_op=2,
        arp_sha="aa:00:00:00:00:02",
        arp_spa="192.168.122.102",
        arp_tpa="192.168.122.101",
    )
    return [
        ProbeEvent(
            ts_ns=100,
            point="netif_receive_skb",
            netns=4026532001,
            ifindex=5,
            ifname="veth0",
            skb=0xFFFF1,
            head=0xAAAA,
            length=28,
            packet=reply,
        ),
        ProbeEvent(
            ts_ns=200,
            point="netif_receive_skb",
            netns=4026532001,
            ifindex=3,
            ifname="br0",
            skb=0xFFFF1,
            head=0xAAAA,
            length=28,
            packet=reply,
        ),
        ProbeEvent(
            ts_ns=300,
            point="neigh_timer_handler",
            netns=4026532001,
            ifindex=5,
            ifname="veth0",
            neigh=NeighChange("192.168.122.102", "INCOMPLETE", "FAILED"),
        ),
        ProbeEvent(
            ts_ns=400,
            point="kfree_skb",
            netns=4026532001,
            ifindex=5,
            ifname="veth0",
            drop_reason="NEIGH_FAILED",
            location="neigh_invalidate",
            cloned=True,
            extra={"protocol": 2048},
        ),
    ]


def _write(path: Path, lost: int = 3) -> None:
    with Recorder(
        path,
        command=["vethtrace", "ping", "vt-song", "192.168.122.102"],
        plan={"net_dev_queue": "tracepoint"},
        pcap=path.with_suffix(".pcapng"),
        ping={"target_netns": "vt-song", "ip": "192.168.122.102"},
    ) as rec:
        rec.topology(_topology())
        for ev in _events():
            rec.event(ev)
        rec.topology(_topology(), change=True)
        rec.finding(Finding("ip-on-bridge-port", "error", "vt-host", "veth0", "s", "e", ["ip a"]))
        rec.verdict(
            Verdict(
                "diverted",
                "taken by br0",
                culprit=IfaceKey(4026532001, 5),
                culprit_netns="vt-host",
                culprit_interface="veth0",
                fix=["x"],
            )
        )
        rec.close(lost=lost)


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run.vtrec"
    _write(path)
    rec = read(path)
    assert rec.header["format"] == FORMAT and rec.header["version"] == VERSION
    assert rec.header["ping"] == {"target_netns": "vt-song", "ip": "192.168.122.102"}
    assert rec.header["command"][1] == "ping"
    assert rec.header["plan"] == {"net_dev_queue": "tracepoint"}
    assert rec.header["started"].endswith("Z")
    assert rec.topology == _topology()
    assert rec.topology_changes == [_topology()]
    assert rec.events == _events()
    assert rec.findings[0].fix == ["ip a"]
    assert rec.verdict is not None and rec.verdict.culprit == IfaceKey(4026532001, 5)
    assert rec.lost == 3 and rec.complete and rec.notes == []
    # The pcapng is referenced relative to the recording, so both can move together.
    assert rec.header["pcap"] == "run.pcapng"
    assert rec.pcap_path == path.with_suffix(".pcapng")


def test_every_line_is_json_with_type_and_data(tmp_path: Path) -> None:
    path = tmp_path / "run.vtrec"
    _write(path)
    lines = path.read_text().splitlines()
    types = [json.loads(line)["type"] for line in lines[1:]]
    assert types == [
        "topology",
        "event",
        "event",
        "event",
        "event",
        "topology-change",
        "finding",
        "verdict",
        "end",
    ]
    end = json.loads(lines[-1])["data"]
    assert end["lost"] == 3 and end["events"] == 4


def test_events_are_read_back_in_kernel_time_order(tmp_path: Path) -> None:
    path = tmp_path / "run.vtrec"
    with Recorder(path) as rec:
        for ev in reversed(_events()):  # threads may interleave writes
            rec.event(ev)
    assert [e.ts_ns for e in read(path).events] == [100, 200, 300, 400]


def test_close_is_idempotent_and_exit_writes_one_end(tmp_path: Path) -> None:
    path = tmp_path / "run.vtrec"
    with Recorder(path) as rec:
        rec.close(lost=7)
    lines = path.read_text().splitlines()
    assert sum('"type":"end"' in line for line in lines) == 1
    assert read(path).lost == 7


def test_truncated_last_line_is_tolerated_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "run.vtrec"
    _write(path)
    lines = path.read_text().splitlines(keepends=True)
    # A crash in the middle of writing the 3rd event: no end record, half a line.
    cut = "".join(lines[:4]) + lines[4][: len(lines[4]) // 2]
    path.write_text(cut)
    rec = read(path)
    assert len(rec.events) == 2
    assert not rec.complete
    assert any("truncated" in n for n in rec.notes)
    assert any("no end record" in n for n in rec.notes)


def test_missing_end_record_is_noted(tmp_path: Path) -> None:
    path = tmp_path / "run.vtrec"
    _write(path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    rec = read(path)
    assert len(rec.events) == 4 and not rec.complete
    assert rec.notes == ["no end record: the recording was cut short; lost-event count unknown"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ("hello world\n", "header line is not JSON"),
        ('{"format": "vethtrace-reco', "header line is truncated"),
        ('{"format": "pcapng"}\n', "not a vethtrace recording"),
        ("[1, 2]\n", "not a vethtrace recording"),
        ('{"format": "vethtrace-recording", "version": 2}\n', "version 2"),
        (
            '{"format": "vethtrace-recording", "version": 1}\n{"type": "event", "da\n'
            '{"type": "end", "data": {"lost": 0}}\n',
            "line 2 is corrupt",
        ),
        (
            '{"format": "vethtrace-recording", "version": 1}\n'
            '{"type": "event", "data": {"point": "x"}}\n',
            "line 2: malformed 'event' record",
        ),
    ],
)
def test_broken_files_give_one_clear_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.vtrec"
    path.write_text(content)
    with pytest.raises(UserError) as err:
        read(path)
    text = str(err.value)
    assert message in text, text
    assert "\n" not in text and str(path) in text


def test_binary_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "bin.vtrec"
    path.write_bytes(b"\x0a\x0d\x0d\x0a\xff\xfe\x00")
    with pytest.raises(UserError, match="not UTF-8"):
        read(path)
    with pytest.raises(UserError, match="no such file"):
        read(tmp_path / "missing.vtrec")
    with pytest.raises(UserError, match="is a directory"):
        read(tmp_path)


def test_unknown_record_types_are_skipped_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "run.vtrec"
    path.write_text(
        '{"format": "vethtrace-recording", "version": 1}\n'
        '{"type": "histogram", "data": {}}\n'
        '{"type": "end", "data": {"lost": 2}}\n'
    )
    rec = read(path)
    assert rec.lost == 2 and rec.complete
    assert rec.notes == ["skipped 1 record(s) of unknown type 'histogram' (newer vethtrace?)"]


def test_unwritable_path_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot write recording"):
        Recorder(tmp_path / "no-such-dir" / "x.vtrec")


SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "recordings"


@pytest.mark.parametrize("name", ["seed", "seed-fixed"])
def test_real_recordings_round_trip(tmp_path: Path, name: str) -> None:
    """A recording made by `vethtrace ping --write`, read and written again,
    reads back identical (every event field, topology, findings, verdict)."""
    first = read(SAMPLES / f"{name}.vtrec")
    assert first.complete and first.events and first.topology is not None
    copy = tmp_path / "copy.vtrec"
    header = {k: v for k, v in first.header.items() if k not in ("format", "version")}
    extra = {k: v for k, v in header.items() if k not in ("tool", "kernel", "started", "clock")}
    with Recorder(copy, **extra) as rec:
        rec.topology(first.topology)
        for ev in first.events:
            rec.event(ev)
        for f in first.findings:
            rec.finding(f)
        if first.verdict is not None:
            rec.verdict(first.verdict)
        rec.close(lost=first.lost)
    again = read(copy)
    assert again.topology == first.topology
    assert again.events == first.events
    assert again.findings == first.findings
    assert again.verdict == first.verdict
    assert again.header["ping"] == first.header["ping"]
    assert again.header["plan"] == first.header["plan"]


def test_ids_are_hex_strings_in_recordings_and_trace_json(tmp_path) -> None:
    """Issue #20: 64-bit skb/head ids as JSON numbers are rounded by jq and
    JavaScript. Written as hex strings, read back as integers; recordings made
    before (integers) still read (the samples are such recordings)."""
    import json as jsonmod

    from vethtrace.clock import Clock
    from vethtrace.model import ProbeEvent, Topology
    from vethtrace.record import Recorder, read
    from vethtrace.render.trace import NetnsNames, json_line

    skb, head = 0xFFFF88815ECBC501, 0xFFFF88815ECBC5FF  # not representable as a double
    ev = ProbeEvent(ts_ns=5_000_000_000, point="net_dev_queue", netns=1, ifindex=2,
                    ifname="eth0", skb=skb, head=head)  # fmt: skip
    path = tmp_path / "r.vtrec"
    with Recorder(path, command=["t"]) as rec:
        rec.event(ev)
    line = path.read_text().splitlines()[1]
    assert f'"skb":"0x{skb:x}"' in line and f'"head":"0x{head:x}"' in line
    back = read(path).events[0]
    assert (back.skb, back.head) == (skb, head)
    old = path.read_text().replace(f'"0x{skb:x}"', str(skb)).replace(f'"0x{head:x}"', str(head))
    path.write_text(old)
    assert read(path).events[0].skb == skb
    clock = Clock(offset_ns=1_700_000_000 * 10**9)
    obj = jsonmod.loads(json_line(ev, NetnsNames(Topology()), clock))
    assert obj["skb"] == f"0x{skb:x}" and int(obj["head"], 16) == head
    assert obj["time"] == "2023-11-14T22:13:25.000000000Z" and obj["ts_ns"] == 5_000_000_000
