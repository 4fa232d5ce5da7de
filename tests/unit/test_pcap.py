"""pcapng writer: tshark (Wireshark's reader, an independent implementation) must
read back every frame with its interface name ("netns/ifname"), description,
direction and nanosecond timestamp."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from vethtrace.collect.pcapng import PcapngWriter, write_frames
from vethtrace.collect.sniff import Frame, summarize
from vethtrace.model import ProbeEvent

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark not installed (./run setup)")


def arp_frame(op: int, sha: bytes, spa: str, tpa: str) -> bytes:
    def ip(a: str) -> bytes:
        return bytes(int(x) for x in a.split("."))

    dst = b"\xff" * 6 if op == 1 else bytes.fromhex("020000000001")
    return (
        dst + sha + struct.pack("!H", 0x0806)
        + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)
        + sha + ip(spa) + (b"\0" * 6) + ip(tpa)
    )  # fmt: skip


def frame(ns: str, inode: int, ifindex: int, ifname: str, data: bytes, out: bool, wall: int):
    ev = ProbeEvent(
        ts_ns=wall - 10**18, point="sniff", netns=inode, ifindex=ifindex, ifname=ifname,
        packet=summarize(data), source="sniff",
        extra={"direction": "outgoing" if out else "incoming", "wall_ns": wall},
    )  # fmt: skip
    return Frame(ev, data, ns)


def tshark_fields(path: Path, *fields: str) -> list[list[str]]:
    args = [TSHARK or "tshark", "-r", str(path), "-T", "fields"]
    for f in fields:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def test_frames_read_back_with_interface_direction_and_time(tmp_path: Path) -> None:
    mac = bytes.fromhex("0200000000aa")
    req = arp_frame(1, mac, "192.168.122.101", "192.168.122.102")
    rep = arp_frame(2, bytes.fromhex("0200000000bb"), "192.168.122.102", "192.168.122.101")
    wall = 1_795_000_000_123_456_789
    frames = [
        frame("vt-host", 4026531111, 3, "veth0", req, True, wall),
        frame("vt-song", 4026532222, 2, "veth1", req, False, wall + 20_000),
        # same name and ifindex in another namespace: must be a different interface
        frame("vt-other", 4026533333, 2, "veth1", rep, False, wall + 30_000),
        frame("vt-host", 4026531111, 3, "veth0", rep, False, wall + 40_000),
    ]
    path = tmp_path / "x.pcapng"
    assert write_frames(str(path), frames) == 4
    rows = tshark_fields(
        path, "frame.interface_name", "frame.interface_description", "frame.p2p_dir",
        "arp.opcode", "frame.time_epoch", "arp.src.proto_ipv4",
    )  # fmt: skip
    assert [r[0] for r in rows] == ["vt-host/veth0", "vt-song/veth1", "vt-other/veth1",
                                    "vt-host/veth0"]  # fmt: skip
    assert "inode 4026533333" in rows[2][1] and "ifindex 2" in rows[2][1]
    assert [r[2] for r in rows] == ["0", "1", "1", "1"]  # 0 sent, 1 received
    assert [r[3] for r in rows] == ["1", "1", "2", "2"]
    assert rows[0][4].startswith("1795000000.123456789")
    assert rows[3][4].startswith("1795000000.123496789")
    assert rows[3][5] == "192.168.122.102"


def test_writer_declares_each_interface_once(tmp_path: Path) -> None:
    path = tmp_path / "y.pcapng"
    with PcapngWriter(str(path)) as w:
        a = w.interface(1, 2, "ns1", "eth0")
        b = w.interface(2, 2, "ns2", "eth0")
        assert (a, b) == (0, 1) and w.interface(1, 2, "ns1", "eth0") == 0
        w.packet(a, 1_000_000_000, b"\x00" * 60, outgoing=None, comment="odd length ok")
        w.packet(b, 2_000_000_001, b"\x01" * 61)
    rows = tshark_fields(path, "frame.interface_name", "frame.len", "frame.comment")
    assert rows == [["ns1/eth0", "60", "odd length ok"], ["ns2/eth0", "61", ""]]
