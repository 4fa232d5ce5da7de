"""Is anything listening on a port inside a container? Read from the kernel's
socket tables as the container sees them: /proc/PID/net/{tcp,tcp6,udp,udp6} of
one of its processes shows the sockets of that process's network namespace.

Why: a published port DNATs host:PORT to CONTAINER_IP:CPORT, and when nothing in
the container listens on CPORT (or only on 127.0.0.1) the client gets a reset
or silence although every rule is right; only the socket table shows it. The
parser is pure (unit tests feed it recorded tables).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"


def _addr(hexaddr: str) -> str:
    """The kernel's hex (host byte order, 32-bit words) address -> text."""
    raw = bytes.fromhex(hexaddr)
    words = struct.unpack(f"<{len(raw) // 4}I", raw)
    packed = struct.pack(f">{len(words)}I", *words)
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, packed)


def parse(text: str, proto: str) -> set[tuple[str, int]]:
    """(local address, port) of every listening TCP socket, or unconnected UDP
    socket, in one /proc/net/{tcp,udp}[6] table."""
    want = TCP_LISTEN if proto == "tcp" else UDP_UNCONNECTED
    out = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != want:
            continue
        addr, _, port = fields[1].partition(":")
        try:
            out.add((_addr(addr), int(port, 16)))
        except (ValueError, struct.error):
            continue
    return out


def answers(sockets: set[tuple[str, int]], port: int, ip: str) -> bool:
    """A socket bound to `port` on `ip` (the DNAT target) or on every address."""
    for addr, p in sockets:
        if p != port:
            continue
        a = ipaddress.ip_address(addr)
        if a.is_unspecified or addr == ip or (
            isinstance(a, ipaddress.IPv6Address) and str(a.ipv4_mapped) == ip
        ):
            return True
    return False


def listening(pid: int, proto: str, port: int, ip: str) -> bool | None:
    """Whether the container process `pid` has a socket that would take the DNAT'd
    connection to ip:port; None when its tables cannot be read."""
    sockets: set[tuple[str, int]] = set()
    read = False
    for suffix in ("", "6"):
        try:
            with open(f"/proc/{pid}/net/{proto}{suffix}") as f:
                sockets |= parse(f.read(), proto)
            read = True
        except OSError:
            continue
    return answers(sockets, port, ip) if read else None
