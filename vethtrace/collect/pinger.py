"""The ICMP echo sender behind `vethtrace ping`.

Why a raw ICMP socket created inside the source namespace and not a
scapy-crafted frame: the kernel must resolve the next hop itself (route
lookup, ARP, neighbour entry) — its neighbour machinery is exactly what fails
in the seed case, and a hand-made Ethernet frame would bypass it. Each send is
stamped just before sendto(), because the kernel emits the ARP request inside
that call and the timeline must show the echo first.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from vethtrace import netns
from vethtrace.model import ProbeEvent

RECV_TIMEOUT_S = 0.05  # how often the sender notices stop() while waiting for replies


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _checksum(head + payload), ident, seq) + payload


class Pinger:
    """Echo requests from a raw ICMP socket created inside the source namespace;
    reports ping-send / ping-reply / ping-error events (monotonic ns)."""

    def __init__(
        self,
        source: str,
        ip: str,
        count: int,
        out: Callable[[ProbeEvent], None],
        inode: int,
        size: int = 56,
    ) -> None:
        self.source, self.ip, self.count, self._out, self.inode = source, ip, count, out, inode
        self.size = size
        self.ident = (os.getpid() ^ int(time.monotonic_ns() // 1000)) & 0xFFFF
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ping-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(3)

    def _event(self, point: str, ts: int = 0, **extra: Any) -> None:
        self._out(
            ProbeEvent(
                ts_ns=ts or time.monotonic_ns(),
                point=point,
                netns=self.inode,
                ifindex=0,
                ifname="",
                source="ping",
                extra=extra,
            )
        )

    def _run(self) -> None:
        try:
            with netns.entered(self.source):
                sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop(sock)
        finally:
            sock.close()

    def _loop(self, sock: socket.socket) -> None:
        sock.settimeout(RECV_TIMEOUT_S)
        seq, next_send = 0, time.monotonic()
        payload = (b"vethtrace" + bytes(range(256)) * (self.size // 256 + 1))[: self.size]
        while not self._stop.is_set():
            now = time.monotonic()
            if seq < self.count and now >= next_send:
                seq += 1
                # stamped before sendto: the kernel sends the ARP request inside it
                ts = time.monotonic_ns()
                try:
                    sock.sendto(echo_request(self.ident, seq, payload), (self.ip, 0))
                    self._event("ping-send", ts, seq=seq, ident=self.ident)
                except OSError as exc:
                    self._event("ping-error", ts, seq=seq, errno=exc.errno, error=exc.strerror)
                next_send = now + 1.0
            try:
                data, addr = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError as exc:
                self._event("ping-error", errno=exc.errno, error=exc.strerror)
                continue
            self._parse(data, addr[0])

    def _parse(self, data: bytes, sender: str) -> None:
        ihl = (data[0] & 0x0F) * 4
        icmp = data[ihl:]
        if len(icmp) < 8:
            return
        kind, code, _sum, ident, seq = struct.unpack("!BBHHH", icmp[:8])
        if kind == 0 and ident == self.ident and sender == self.ip:
            self._event("ping-reply", seq=seq, ident=ident, sender=sender)
        elif kind in (3, 11) and len(icmp) >= 8 + 20 + 8:
            inner = icmp[8:]
            iihl = (inner[0] & 0x0F) * 4
            ik, _c, _s, iid, iseq = struct.unpack("!BBHHH", inner[iihl : iihl + 8])
            if ik == 8 and iid == self.ident:
                self._event("ping-error", seq=iseq, icmp_type=kind, icmp_code=code, sender=sender)
