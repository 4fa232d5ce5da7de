"""`trace --pcap FILE`: every frame in scope that matches FILTER, as pcapng.

The probes see packets, not bytes on the wire; a pcapng needs the bytes. So
trace opens the same per-interface sniffers `ping --pcap` uses
(collect/sniff.py: one packet socket per interface, opened inside its
namespace and checked by (netns inode, ifindex)) on every interface that is up
in the scope (the -n namespaces, or every named namespace and the initial
one), decodes each frame and keeps those FILTER matches (the same filter the
probes evaluate, in Python: collect/filter.py). Frames are written as they are
drained, so an interrupted trace leaves every frame up to then in the file;
each packet names its interface "netns/ifname" and describes the namespace
inode and ifindex (collect/pcapng.py).

At most MAX_SNIFFERS interfaces (a socket and a thread each); the rest is said.
"""

from __future__ import annotations

from typing import Any

from vethtrace.collect.filter import Filter
from vethtrace.collect.pcapng import PcapngWriter
from vethtrace.collect.sniff import SnifferSet, Target, load_scapy
from vethtrace.errors import UserError

MAX_SNIFFERS = 64


class PcapTap:
    def __init__(self, path: str, netns: list[str], packet_filter: Filter) -> None:
        self.path = path
        self.netns = netns
        self.filter = packet_filter
        try:
            self.writer = PcapngWriter(path)
        except OSError as exc:
            raise UserError(f"cannot write pcap {path}: {exc.strerror}") from None
        self.sniffers: SnifferSet | None = None
        self.count = 0

    def start(self) -> list[str]:
        """Open the sniffers; returns what could not be sniffed (one line each)."""
        from vethtrace.topology import discover

        load_scapy()  # frames are decoded when drained
        topo = discover(self.netns or None, firewall=False)
        targets: list[Target] = []
        skipped = 0
        for ns in topo.namespaces:
            if ns.partial or not ns.named:
                continue  # a peer's namespace outside -n, or one held only by a process
            for iface in ns.interfaces:
                if not (iface.admin_up and iface.carrier) or iface.kind == "loopback":
                    continue
                if len(targets) >= MAX_SNIFFERS:
                    skipped += 1
                    continue
                targets.append(Target(ns.name, ns.inode, iface.name, iface.key.ifindex))
        self.sniffers = SnifferSet(targets)
        self.sniffers.start()
        notes = list(self.sniffers.failed)
        if skipped:
            notes.append(f"{skipped} more interfaces not sniffed (at most {MAX_SNIFFERS}; use -n)")
        return notes

    def write_ready(self) -> None:
        if self.sniffers is not None:
            self._write(self.sniffers.drain())

    def _write(self, frames: list[Any]) -> None:
        for fr in frames:
            ev = fr.event
            if self.filter.active and (ev.packet is None or not self.filter.matches(ev.packet)):
                continue
            iid = self.writer.interface(ev.netns, ev.ifindex, fr.netns, ev.ifname)
            self.writer.packet(iid, int(ev.extra.get("wall_ns") or 0), fr.data, fr.outgoing)
            self.count += 1

    def close(self) -> None:
        if self.sniffers is not None:
            sniffers, self.sniffers = self.sniffers, None
            self._write(sniffers.stop())
        self.writer.close()
