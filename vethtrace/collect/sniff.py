"""Per-interface packet sniffers, each opened inside the interface's own namespace.

Why per namespace: a PF_PACKET socket binds to a device *name* looked up in the
namespace of the thread that creates it, and names repeat across namespaces
(many hosts have several `eth0`/`br0`). So every sniffer gets its own thread
that setns()'s into the namespace, creates the socket there, then checks that
the bound device has the ifindex discovery reported and that the thread really
is in the expected namespace. A sniffer is scoped by (netns inode, ifindex),
never by name alone.

The socket is the same PF_PACKET/ETH_P_ALL socket scapy's `conf.L2listen`
opens, made directly: scapy resolves names through its interface list, cached
from the namespace it was imported in (wrong here), and importing scapy costs
~0.4 s that ping cannot spend before its first packet. No filter and no
promiscuous mode (read-only; veth taps see every frame anyway). Frames are
decoded with scapy when they are drained, by which time it is imported.

Why the frames matter next to the kernel events: the sniffer shows what
`tcpdump` on that interface would show — which is exactly what misleads people
in the seed case (tcpdump on veth0 shows the ARP reply, yet veth0's stack never
got it) — and its raw bytes go into `--pcap`.

Timestamps: packet sockets stamp frames with CLOCK_REALTIME (SO_TIMESTAMPNS),
kernel probes with CLOCK_MONOTONIC. `vethtrace.clock.Clock` converts sniffed
times to monotonic ns, so that sniffed frames and kernel events sort on one
time line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from vethtrace import netns as netns_mod
from vethtrace.clock import Clock
from vethtrace.model import PacketSummary, ProbeEvent

SOL_PACKET = 263
PACKET_AUXDATA = 8
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4
ETH_P_ALL = 0x0003
SNAPLEN = 65535
_AUX_FMT = "IIIHHHH"  # struct tpacket_auxdata
_TP_STATUS_VLAN_VALID = 0x10
_TP_STATUS_VLAN_TPID_VALID = 0x40


def load_scapy() -> Any:
    """Import the parts of scapy we use (not scapy.all: that costs ~1 s at start).

    conf.L2listen is only set once scapy.arch.linux is imported."""
    import scapy.arch.linux
    import scapy.layers.inet
    import scapy.layers.l2  # noqa: F401
    from scapy.config import conf

    return conf


def summarize(frame: bytes) -> PacketSummary:
    """Decode an Ethernet frame with scapy into the fields the verdict needs."""
    from scapy.layers.l2 import Ether

    s = PacketSummary()
    with contextlib.suppress(Exception):  # a truncated or odd frame (STP BPDU, 802.3)
        _decode(Ether(frame), s)
    return s


def _decode(pkt: Any, s: PacketSummary) -> None:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import ARP

    s.eth_src, s.eth_dst = pkt.src, pkt.dst
    s.ethertype = getattr(pkt, "type", None)
    if ARP in pkt:
        arp = pkt[ARP]
        s.arp_op, s.arp_sha, s.arp_spa = int(arp.op), arp.hwsrc, arp.psrc
        s.arp_tha, s.arp_tpa = arp.hwdst, arp.pdst
    elif IP in pkt:
        ip = pkt[IP]
        s.ip_src, s.ip_dst, s.ip_proto = ip.src, ip.dst, int(ip.proto)
        s.ip_id = int(ip.id)
        if ICMP in pkt:
            icmp = pkt[ICMP]
            s.icmp_type, s.icmp_code = int(icmp.type), int(icmp.code)
            if s.icmp_type in (0, 8):
                s.icmp_id, s.icmp_seq = int(icmp.id), int(icmp.seq)
        elif TCP in pkt or UDP in pkt:
            l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
            s.sport, s.dport = int(l4.sport), int(l4.dport)


@dataclass
class Target:
    """An interface to sniff: where it lives and what discovery said it is."""

    netns: str  # name usable with vethtrace.netns ("root", a /run/netns name or a path)
    netns_inode: int
    ifname: str
    ifindex: int


@dataclass
class Frame:
    """A sniffed frame: the event for correlation plus the bytes for pcapng."""

    event: ProbeEvent
    data: bytes
    netns: str  # namespace name, for pcapng interface names

    @property
    def outgoing(self) -> bool:
        return self.event.extra.get("direction") == "outgoing"


class SniffError(Exception):
    pass


class Sniffer:
    """One listener thread on one interface; frames go to a shared queue."""

    def __init__(self, target: Target, out: queue.Queue[Frame], clock: Clock) -> None:
        self.target = target
        self._out = out
        self._clock = clock
        self._ready = threading.Event()
        self._stop_r, self._stop_w = os.pipe()
        self.error: BaseException | None = None
        self.count = 0
        self._thread = threading.Thread(
            target=self._run, name=f"sniff:{target.netns}/{target.ifname}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def wait_ready(self, timeout: float = 5.0) -> None:
        if not self._ready.wait(timeout):
            raise SniffError(f"sniffer on {self.label} did not start within {timeout:.0f} s")
        if self.error is not None:
            raise SniffError(f"cannot sniff on {self.label}: {self.error}")

    @property
    def label(self) -> str:
        return f"{self.target.netns}/{self.target.ifname}"

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        if self._thread.is_alive():
            self._thread.join(5.0)
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stop_r = self._stop_w = -1

    def _open(self) -> socket.socket:
        t = self.target
        inode = netns_mod.current_inode()
        if inode != t.netns_inode:
            raise SniffError(f"thread is in netns {inode}, expected {t.netns_inode}")
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            try:
                sock.bind((t.ifname, ETH_P_ALL))
                # binding to a down device succeeds but leaves ENETDOWN pending
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            except OSError as exc:
                err = exc.errno or 0
                if err != errno.ENETDOWN:
                    raise
            if err == errno.ENETDOWN:
                raise SniffError(f"{t.ifname} is down, nothing to see there")
            if err:
                raise OSError(err, os.strerror(err))
            ifindex = socket.if_nametoindex(t.ifname)
            if ifindex != t.ifindex:
                raise SniffError(
                    f"{t.ifname} has ifindex {ifindex} here, expected {t.ifindex} (renamed?)"
                )
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except BaseException:
            sock.close()
            raise
        return sock

    def _run(self) -> None:
        t = self.target
        try:
            with netns_mod.entered(t.netns):
                sock = self._open()
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop(sock)
        except BaseException as exc:  # reported by the owner after stop()
            self.error = exc
        finally:
            sock.close()

    def _loop(self, sock: socket.socket) -> None:
        t = self.target
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        ancbuf = socket.CMSG_SPACE(64) * 2
        while True:
            ready = dict(poller.poll(1000))
            if self._stop_r in ready:
                # drain what is already queued, then stop: frames up to now count
                while self._recv_one(sock, ancbuf, t, block=False):
                    pass
                return
            if sock.fileno() in ready:
                self._recv_one(sock, ancbuf, t, block=False)

    def _recv_one(self, sock: socket.socket, ancbuf: int, t: Target, block: bool) -> bool:
        try:
            data, anc, _flags, addr = sock.recvmsg(
                SNAPLEN, ancbuf, 0 if block else socket.MSG_DONTWAIT
            )
        except BlockingIOError:
            return False
        wall = 0
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                sec, nsec = struct.unpack("qq", cdata[:16])
                wall = sec * 1_000_000_000 + nsec
            elif level == SOL_PACKET and kind == PACKET_AUXDATA:
                status, _len, _snap, _mac, _net, tci, tpid = struct.unpack(
                    _AUX_FMT, cdata[: struct.calcsize(_AUX_FMT)]
                )
                if tci or status & _TP_STATUS_VLAN_VALID:
                    tp = tpid if status & _TP_STATUS_VLAN_TPID_VALID else 0x8100
                    data = data[:12] + struct.pack("!HH", tp, tci) + data[12:]
        if not wall:
            wall = time.time_ns()
        pkttype = addr[2]
        direction = "outgoing" if pkttype == PACKET_OUTGOING else "incoming"
        ev = ProbeEvent(
            ts_ns=self._clock.to_mono(wall),
            point="sniff",
            netns=t.netns_inode,
            ifindex=t.ifindex,
            ifname=t.ifname,
            length=len(data),
            packet=None,  # decoded by SnifferSet.drain(), off the capture thread
            source="sniff",
            extra={"direction": direction, "pkttype": pkttype, "wall_ns": wall},
        )
        self.count += 1
        self._out.put(Frame(ev, data, t.netns))
        return True


@dataclass
class SnifferSet:
    """Sniffers on several interfaces feeding one queue; a context manager that
    always stops every thread and closes every socket, also on Ctrl-C."""

    targets: list[Target]
    clock: Clock = field(default_factory=Clock)
    frames: queue.Queue[Frame] = field(default_factory=queue.Queue)
    sniffers: list[Sniffer] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "netns/if: why" for sniffers that failed

    def start(self, timeout: float = 5.0) -> None:
        """Start all sniffers concurrently; keep the ones that opened, note the others."""
        self.sniffers = [Sniffer(t, self.frames, self.clock) for t in self.targets]
        for s in self.sniffers:
            s.start()
        ok = []
        for s in self.sniffers:
            try:
                s.wait_ready(timeout)
                ok.append(s)
            except SniffError as exc:
                self.failed.append(str(exc))
                s.stop()
        self.sniffers = ok

    def drain(self) -> list[Frame]:
        """Frames captured so far, decoded with scapy."""
        out: list[Frame] = []
        while True:
            try:
                fr = self.frames.get_nowait()
            except queue.Empty:
                return out
            if fr.event.packet is None:
                fr.event.packet = summarize(fr.data)
            out.append(fr)

    def stop(self) -> list[Frame]:
        for s in self.sniffers:
            s.stop()
            if s.error is not None:
                self.failed.append(f"sniffer on {s.label} failed: {s.error}")
        self.sniffers = []
        return self.drain()

    def __enter__(self) -> SnifferSet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
