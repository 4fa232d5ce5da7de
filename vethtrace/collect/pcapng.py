"""A small pcapng writer: one interface block per (namespace, interface).

Why pcapng and not pcap: classic pcap has one link per file, so frames sniffed
on veth0 in one namespace and veth1 in another would be indistinguishable.
pcapng carries an Interface Description Block per interface; we name it
"netns/ifname" (if_name) and describe it with the namespace inode and ifindex
(if_description), and every Enhanced Packet Block points at its interface and
carries the direction (epb_flags inbound/outbound), so Wireshark and
`tshark -T fields -e frame.interface_name` show where each frame was seen.

Timestamps are wall-clock nanoseconds (if_tsresol = 9), what analysts expect.
Format: https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html
"""

from __future__ import annotations

import struct
from types import TracebackType
from typing import Any, BinaryIO

LINKTYPE_ETHERNET = 1
_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_OPT_END, _OPT_COMMENT = 0, 1
_IF_NAME, _IF_DESCRIPTION, _IF_TSRESOL = 2, 3, 9
_SHB_USERAPPL = 4
_EPB_FLAGS = 2
_DIR_INBOUND, _DIR_OUTBOUND = 1, 2


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad(value)


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    return b"".join(_option(c, v) for c, v in opts) + struct.pack("<HH", _OPT_END, 0)


def _block(kind: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", kind, total) + body + struct.pack("<I", total)


class PcapngWriter:
    """Write frames as they come; interfaces are declared on first use."""

    def __init__(self, out: BinaryIO | str, snaplen: int = 65535) -> None:
        self._own = isinstance(out, str)
        self._f: BinaryIO = open(out, "wb") if isinstance(out, str) else out  # noqa: SIM115
        self._snaplen = snaplen
        self._ifaces: dict[tuple[int, int], int] = {}
        self.count = 0
        shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _options([(_SHB_USERAPPL, b"vethtrace")])
        self._f.write(_block(_SHB, shb))

    def interface(
        self, netns_inode: int, ifindex: int, netns: str, ifname: str, container: str | None = None
    ) -> int:
        """Interface id for (netns inode, ifindex), writing its IDB the first time."""
        key = (netns_inode, ifindex)
        if key in self._ifaces:
            return self._ifaces[key]
        held = f", container {container}" if container else ""
        where = f"in netns {netns} (inode {netns_inode}){held}"
        body = struct.pack("<HHI", LINKTYPE_ETHERNET, 0, self._snaplen) + _options(
            [
                (_IF_NAME, f"{netns}/{ifname}".encode()),
                (
                    _IF_DESCRIPTION,
                    f"{ifname} (ifindex {ifindex}) {where}".encode(),
                ),
                (_IF_TSRESOL, bytes([9])),
            ]
        )
        self._f.write(_block(_IDB, body))
        self._ifaces[key] = len(self._ifaces)
        return self._ifaces[key]

    def sniffed(self, fr: Any, names: dict[int, tuple[str, str | None]] | None = None) -> None:
        """One sniffed frame (vethtrace.collect.sniff.Frame). `names`: netns inode ->
        (the namespace's name, the container holding it or None), from the topology: a
        container's namespace is named as everywhere else (docker:web, not
        /proc/PID/ns/net), and its packets carry a comment naming the container."""
        ev = fr.event
        name, container = (names or {}).get(ev.netns, (fr.netns, None))
        iid = self.interface(ev.netns, ev.ifindex, name, ev.ifname, container)
        comment = f"container {container} (netns {name})" if container else None
        self.packet(iid, int(ev.extra.get("wall_ns") or 0), fr.data, outgoing=fr.outgoing,
                    comment=comment)

    def packet(
        self,
        iface_id: int,
        wall_ns: int,
        data: bytes,
        outgoing: bool | None = None,
        comment: str | None = None,
    ) -> None:
        captured = data[: self._snaplen]
        opts: list[tuple[int, bytes]] = []
        if outgoing is not None:
            flags = _DIR_OUTBOUND if outgoing else _DIR_INBOUND
            opts.append((_EPB_FLAGS, struct.pack("<I", flags)))
        if comment:
            opts.append((_OPT_COMMENT, comment.encode()))
        body = (
            struct.pack(
                "<IIIII",
                iface_id,
                (wall_ns >> 32) & 0xFFFFFFFF,
                wall_ns & 0xFFFFFFFF,
                len(captured),
                len(data),
            )
            + _pad(captured)
            + _options(opts)
        )
        self._f.write(_block(_EPB, body))
        self.count += 1

    def close(self) -> None:
        self._f.flush()
        if self._own:
            self._f.close()

    def __enter__(self) -> PcapngWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_frames(
    path: str,
    frames: list,  # list[sniff.Frame]
    names: dict[int, tuple[str, str | None]] | None = None,
) -> int:
    """Write sniffed frames (vethtrace.collect.sniff.Frame) in time order; returns count.
    `names` as for PcapngWriter.sniffed."""
    with PcapngWriter(path) as w:
        for fr in sorted(frames, key=lambda f: f.event.ts_ns):
            w.sniffed(fr, names)
        return w.count
