"""What a trace's `-n` scope still holds, while it runs.

`trace -n X` compiles X's namespace inode into the probes. When X is deleted
(or an interface in it), the probes see nothing more from it, and nothing
said so: a trace that looks quiet but traces nothing. `ScopeWatch.check()`
is asked every ~0.5 s by the command and returns what changed since the last
call: a namespace gone (its name no longer there, or naming another inode), a
namespace back under its name (deleted and re-created: a new namespace, whose
inode number may be the old one's, freed and reused; the command adds it to
the probes' scope, map data, and `adopt`s it here), an interface gone or new.

Namespace presence is a stat of /run/netns/NAME (microseconds); interfaces
need a link dump in each namespace, so they are read at most once a second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vethtrace import netns as netns_mod
from vethtrace.errors import UserError
from vethtrace.model import IfaceKey

IFACES_EVERY_S = 1.0


@dataclass
class ScopeChange:
    change: str  # netns-gone | netns-back | iface-gone | iface-new
    netns: str
    inode: int
    interface: str | None = None
    left: list[str] = field(default_factory=list)  # namespaces of the scope still traced
    adopted: bool = False  # netns-back: the new namespace joined the probes' scope

    def text(self) -> str:
        what = {
            "netns-gone": f"namespace {self.netns} vanished",
            "netns-back": f"namespace {self.netns} is back (a new one, inode {self.inode})"
            + ("; traced" if self.adopted else ""),
            "iface-gone": f"interface {self.netns}/{self.interface} vanished",
            "iface-new": f"interface {self.netns}/{self.interface} appeared",
        }[self.change]
        return what


class ScopeWatch:
    """The namespaces named by -n (their inodes at start) and their interfaces.

    `inodes`: those the probes were given, one per name; without them the names
    are resolved now. Given, a namespace that vanished between the probes' start
    and this watch's is the first change check() reports, not an error."""

    def __init__(self, names: list[str], inodes: list[int] | None = None) -> None:
        self.names = list(names)
        if inodes is None:
            inodes = [netns_mod.inode_of(n) for n in self.names]
        self.inodes = dict(zip(self.names, inodes, strict=True))  # at start: traced
        self.gone: set[str] = set()
        self.current: dict[str, int] = dict(self.inodes)  # what each name holds now
        self.ifaces: dict[str, dict[IfaceKey, str]] = {}
        self._ifaces_at = 0.0
        self.ifaces = self._read_ifaces(self.names)

    @property
    def traced(self) -> list[str]:
        """Namespaces of the scope the probes still see."""
        return [n for n in self.names if n not in self.gone]

    def check(self, now: float | None = None) -> list[ScopeChange]:
        now = time.monotonic() if now is None else now
        out: list[ScopeChange] = []
        for name in self.names:
            inode = self._inode(name)
            if inode == self.current.get(name):
                continue
            if name not in self.gone and inode != self.inodes[name]:
                self.gone.add(name)
                self.ifaces.pop(name, None)
                out.append(ScopeChange("netns-gone", name, self.inodes[name]))
            # back: another inode, or the same number (the kernel reuses freed ones)
            if inode and (inode != self.inodes[name] or name in self.gone):
                out.append(ScopeChange("netns-back", name, inode))
            self.current[name] = inode
        if self.traced and now - self._ifaces_at >= IFACES_EVERY_S:
            out += self._iface_changes()
        for c in out:
            c.left = self.traced
        return out

    def adopt(self, change: ScopeChange) -> None:
        """A namespace back under its name is traced from now on (the caller added
        its inode to the probes' scope): its interfaces are watched as before."""
        name = change.netns
        self.inodes[name] = self.current[name] = change.inode
        self.gone.discard(name)
        self.ifaces.update(self._read_ifaces([name]))
        change.adopted = True
        change.left = self.traced

    def _inode(self, name: str) -> int:
        try:
            return netns_mod.inode_of(name)
        except UserError:
            return 0

    def _read_ifaces(self, names: list[str]) -> dict[str, dict[IfaceKey, str]]:
        from vethtrace.topology import discover

        self._ifaces_at = time.monotonic()
        try:
            topo = discover(names, firewall=False)
        except UserError:  # one vanished between the stat and the dump: next round
            return self.ifaces
        out: dict[str, dict[IfaceKey, str]] = {}
        for ns in topo.namespaces:
            if ns.name in names and not ns.partial and ns.inode == self.inodes.get(ns.name):
                out[ns.name] = {i.key: i.name for i in ns.interfaces}
        return out

    def _iface_changes(self) -> list[ScopeChange]:
        before = self.ifaces
        after = self._read_ifaces(self.traced)
        out: list[ScopeChange] = []
        for name, now in after.items():
            had = before.get(name, {})
            inode = self.inodes[name]
            out += [ScopeChange("iface-gone", name, inode, had[k]) for k in had if k not in now]
            out += [ScopeChange("iface-new", name, inode, now[k]) for k in now if k not in had]
        self.ifaces = {**before, **after}
        return out
