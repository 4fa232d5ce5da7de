"""Checking the overlay parts of a lab scenario: a `[[link]]` of kind vxlan
(its id, local, dstport, learning and dev keys) and `[[fdb]]` entries (a
vxlan device's remote VTEP per MAC).

Split from parse.py (which stays the reader of every other table) so multi-node
labs add their keys in one place; references are checked against parse.py's
_Declared like every other table's.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from vethtrace.lab import tomlcheck as tc
from vethtrace.lab.scenario import Fdb, VxlanSpec

if TYPE_CHECKING:
    from vethtrace.lab.parse import _Declared

VXLAN_KEYS = {"id", "local", "dstport", "learning", "dev"}
_MAC = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


def vxlan(t: dict[str, Any], where: str) -> VxlanSpec:
    """The vxlan keys of a `[[link]]` (the interface keys are parse.py's)."""
    if "id" not in t:
        raise tc.Bad(f"{where}: a vxlan needs id = <VNI, 0-16777215>")
    vni = tc.typed(t["id"], int, where, "id")
    if not 0 <= vni < 1 << 24:
        raise tc.Bad(f"{where}: id {vni} out of range 0-16777215")
    spec = VxlanSpec(id=vni)
    if "dev" in t:
        spec.dev = tc.typed(t["dev"], str, where, "dev")
    if "local" in t:
        spec.local = tc.ip(t["local"], where, "local")
    if "dstport" in t:
        spec.dstport = tc.port(t["dstport"], where)
    spec.learning = tc.typed(t.get("learning", False), bool, where, "learning")
    return spec


def fdb(t: Any, i: int, declared: _Declared) -> Fdb:
    """One `[[fdb]]`: netns, dev (a vxlan link there), mac, dst (the remote VTEP)."""
    where = f"[[fdb]] #{i}"
    t = tc.keys(t, where, {"netns", "dev", "mac", "dst"}, set())
    declared.check_ns(t["netns"], where)
    link = declared.find(t["netns"], t["dev"])
    if link is None or link.kind != "vxlan":
        raise tc.Bad(f"{where}: dev {t['dev']!r} is not a vxlan link in netns {t['netns']!r}")
    if not isinstance(t["mac"], str) or not _MAC.match(t["mac"]):
        raise tc.Bad(f"{where}: mac {t['mac']!r} is not like 02:00:00:00:00:01")
    return Fdb(t["netns"], t["dev"], t["mac"], tc.ip(t["dst"], where, "dst"))
