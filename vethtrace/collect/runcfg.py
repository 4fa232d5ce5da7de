"""What the probes are told per run: the packet filter, the -n scope, the VXLAN ports.

Why map data and not -D flags: the probes are compiled once per small
variant (probe areas, delivery) and cached (progcache.py; `doctor --prepare`
fills the cache at set-up), so a run with a new filter or scope loads them
in milliseconds instead of waiting ~1 s for bcc. Everything that differs
between runs goes into two maps instead (vethtrace/probes/vethtrace.h):

* `vt_cfg`, one entry: ready, filter active, the filter accepts an empty
  packet, -n scoped, the VXLAN ports, the filter's jump program
  (filter.py). `ready` is written last, in the same update as the rest:
  until then the probes ignore everything (bcc attaches before we can write).
* `vt_scope`: the inodes of the namespaces in scope (keys; value 1).

`Maps` holds the fds (from bcc's tables or from the cache's own maps);
`configure` writes a run's settings (again, to change the VXLAN ports while
tracing), `add_scope` extends the scope while tracing (and forgets the
per-CPU out-of-scope memo, which may name them). More than VXLAN_MAX ports:
the first ones are watched (the default first).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vethtrace.collect import syscall as sc
from vethtrace.collect.filter import Filter
from vethtrace.errors import UserError
from vethtrace.model import Topology

VXLAN_DEFAULT = 4789  # IANA; always watched
VXLAN_MAX = 8  # VT_VXLAN_MAX in vethtrace.h
SCOPE_MAX = 4096  # VT_SCOPE_MAX in vethtrace.h
_HEAD = struct.Struct(f"<5B3x{VXLAN_MAX}H")  # struct vt_cfg up to insn[]


MAP_NAMES = ("vt_cfg", "vt_scope", "vt_nsout")


@dataclass
class Maps:
    cfg: int  # vt_cfg
    scope: int  # vt_scope
    nsout: int  # vt_nsout (per-CPU)
    nsout_size: int  # its value size
    ncpu: int  # possible CPUs (a per-CPU value has one slot each)

    @classmethod
    def of(cls, fds: dict[str, int]) -> Maps:
        """From the map fds by name (bcc's tables or the cache's maps)."""
        from vethtrace.collect.progcache import map_info, possible_cpus

        nsout = fds["vt_nsout"]
        return cls(fds["vt_cfg"], fds["vt_scope"], nsout, map_info(nsout).value_size,
                   possible_cpus())  # fmt: skip


def vxlan_ports_of(topo: Topology) -> list[int]:
    """The UDP ports of the VXLAN devices in a discovered topology (flannel's
    8472, Cilium's 8472, ...), in discovery order."""
    return [i.vxlan.port for ns in topo.namespaces for i in ns.interfaces if i.vxlan]


def vxlan_ports(ports: list[int] | None) -> list[int]:
    """The default port first, then the others once each, at most VXLAN_MAX."""
    out = [VXLAN_DEFAULT]
    for p in ports or []:
        if p and p not in out:
            out.append(int(p))
    return out[:VXLAN_MAX]


def cfg_bytes(flt: Filter, scoped: bool, ports: list[int] | None) -> bytes:
    """struct vt_cfg for this run, ready set."""
    vx = vxlan_ports(ports)
    head = _HEAD.pack(1, int(flt.active), int(flt.matches_empty), int(scoped), len(vx),
                      *(vx + vx[:1] * (VXLAN_MAX - len(vx))))  # fmt: skip
    return head + flt.program_bytes()


def check_scope(inodes: list[int] | None) -> None:
    if inodes is not None and len(set(inodes)) > SCOPE_MAX:
        raise UserError(f"-n: at most {SCOPE_MAX} namespaces can be traced at once")


def configure(maps: Maps, flt: Filter, inodes: list[int] | None,
              ports: list[int] | None = None) -> None:  # fmt: skip
    """Write the scope, then the config with `ready` (the probes start reporting)."""
    check_scope(inodes)
    for ino in sorted(set(inodes or [])):
        sc.map_update(maps.scope, struct.pack("<I", ino), b"\1")
    sc.map_update(maps.cfg, struct.pack("<I", 0), cfg_bytes(flt, inodes is not None, ports))


def add_scope(maps: Maps, inodes: list[int]) -> None:
    """Namespaces joining the scope while tracing (no recompile): their inodes
    go in, and the out-of-scope memo is cleared on every CPU (it may hold the
    address of a namespace now in scope)."""
    for ino in sorted(set(inodes)):
        sc.map_update(maps.scope, struct.pack("<I", ino), b"\1")
    step = (maps.nsout_size + 7) & ~7
    sc.map_update(maps.nsout, struct.pack("<I", 0), bytes(step * maps.ncpu))
