"""What changed in a namespace, in words: two snapshots of it in, `Change`s out.

Why diff models instead of decoding each notification: a single RTM_NEWLINK
says "something about this link changed" and carries the whole link; what a
person needs is the difference ("veth0 enslaved to br0", "carrier lost"), and
the model already holds every field the checks reason about. So the recorder
re-reads a namespace after notifications and this module compares the two
reads, field by field, with no I/O. Neighbours are left out: their
notifications are recorded as they come (collect/monitor.py), and their
REACHABLE/STALE cycling is not a topology change. What the kernel adds by
itself with every address or link is left out too (local, broadcast and
multicast routes, IPv6 link-local addresses and routes, multicast and
own-MAC FDB entries): the address or link change says it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vethtrace.model import Address, FdbEntry, Interface, Namespace, Route


@dataclass
class Change:
    """One difference. kind: link | addr | route | fdb | port | netns; iface is
    the interface it is about (its name), when it is about one."""

    kind: str
    text: str
    iface: str | None = None


def diff_namespace(old: Namespace | None, new: Namespace) -> list[Change]:
    """The changes from `old` to `new` (old None: the namespace appeared)."""
    if old is None:
        n = len(new.interfaces)
        return [Change("netns", f"namespace appeared ({n} interface{'s' * (n != 1)})")]
    out: list[Change] = []
    olds = {i.key.ifindex: i for i in old.interfaces}
    news = {i.key.ifindex: i for i in new.interfaces}
    for idx, iface in news.items():
        if idx not in olds:
            out.append(Change("link", f"{iface.name} added ({_describe(iface, new)})", iface.name))
        else:
            out += _link_changes(olds[idx], iface, old, new)
    for idx, iface in olds.items():
        if idx not in news:
            out.append(Change("link", f"{iface.name} removed", iface.name))
    out += _address_changes(olds, news)
    out += _route_changes(old, new)
    out += _fdb_changes(old, new)
    return out


def _name(ns: Namespace, ifindex: int | None) -> str:
    iface = ns.iface(ifindex) if ifindex is not None else None
    return iface.name if iface else f"if{ifindex}"


def _describe(iface: Interface, ns: Namespace) -> str:
    words = [iface.kind, "up" if iface.admin_up else "down"]
    if iface.master is not None:
        words.append(f"in {_name(ns, iface.master)}")
    return ", ".join(words)


def _link_changes(a: Interface, b: Interface, old: Namespace, new: Namespace) -> list[Change]:
    out: list[Change] = []

    def say(kind: str, text: str) -> None:
        out.append(Change(kind, text, b.name))

    if a.name != b.name:
        say("link", f"{a.name} renamed to {b.name}")
    if a.master != b.master:
        if b.master is None:
            say("link", f"{b.name} released from {_name(old, a.master)}")
        elif a.master is None:
            say("link", f"{b.name} enslaved to {_name(new, b.master)}")
        else:
            say("link", f"{b.name} moved from {_name(old, a.master)} to {_name(new, b.master)}")
    if a.admin_up != b.admin_up:
        say("link", f"{b.name} set {'up' if b.admin_up else 'down'}")
    if a.carrier != b.carrier:
        say("link", f"{b.name} carrier {'on' if b.carrier else 'lost'}")
    elif a.oper_state != b.oper_state and a.admin_up == b.admin_up:
        say("link", f"{b.name} operstate {a.oper_state} -> {b.oper_state}")
    if a.mtu != b.mtu:
        say("link", f"{b.name} mtu {a.mtu} -> {b.mtu}")
    if a.mac != b.mac and a.mac and b.mac:
        say("link", f"{b.name} mac {a.mac} -> {b.mac}")
    if (a.peer is None) != (b.peer is None) or a.peer_state != b.peer_state:
        say("link", f"{b.name} peer {_peer(a)} -> {_peer(b)}")
    pa, pb = a.bridge_port, b.bridge_port
    if pa is not None and pb is not None:
        for field in ("state", "learning", "flood", "isolated", "hairpin", "neigh_suppress"):
            va, vb = getattr(pa, field), getattr(pb, field)
            if va != vb:
                say("port", f"bridge port {b.name} {field} {_word(va)} -> {_word(vb)}")
    if a.bridge_stp != b.bridge_stp and b.bridge_stp is not None:
        say("link", f"{b.name} stp {_word(a.bridge_stp)} -> {_word(b.bridge_stp)}")
    return out


def _word(v: object) -> str:
    return {True: "on", False: "off", None: "unknown"}.get(v, str(v))  # type: ignore[call-overload]


def _peer(i: Interface) -> str:
    if i.peer_state:
        return i.peer_state
    return "present" if i.peer is not None else "none"


def _addr(a: Address) -> str:
    return f"{a.address}/{a.prefixlen}"


def _address_changes(olds: dict[int, Interface], news: dict[int, Interface]) -> list[Change]:
    out: list[Change] = []
    for idx in sorted(set(olds) | set(news)):
        a, b = olds.get(idx), news.get(idx)
        before = {_addr(x) for x in a.addresses if not _automatic(x)} if a else set()
        after = {_addr(x) for x in b.addresses if not _automatic(x)} if b else set()
        if b is None:
            continue  # the link went: said once, not per address
        name = b.name
        out += [
            Change("addr", f"address {x} added on {name}", name) for x in sorted(after - before)
        ]
        out += [
            Change("addr", f"address {x} removed from {name}", name) for x in sorted(before - after)
        ]
    return out


def _automatic(a: Address) -> bool:
    """IPv6 link-local addresses: the kernel adds one to every link it brings up."""
    return a.family == 6 and a.address.lower().startswith("fe80:")


def _route_key(r: Route, ns: Namespace) -> str:
    words = [r.dst]
    if r.kind != "unicast":
        words.insert(0, r.kind)
    if r.gateway:
        words.append(f"via {r.gateway}")
    if r.oif is not None:
        words.append(f"dev {_name(ns, r.oif)}")
    if r.table != 254:
        words.append(f"table {r.table}")
    if r.metric:
        words.append(f"metric {r.metric}")
    return " ".join(words)


def _route_changes(old: Namespace, new: Namespace) -> list[Change]:
    def keyed(ns: Namespace) -> dict[str, Route]:
        routes = [*ns.routes, *ns.other_routes]
        return {_route_key(r, ns): r for r in routes if not _kernel_route(r)}

    a, b = keyed(old), keyed(new)
    out = [Change("route", f"route {k} added", _iface(b[k], new)) for k in sorted(set(b) - set(a))]
    out += [
        Change("route", f"route {k} removed", _iface(a[k], old)) for k in sorted(set(a) - set(b))
    ]
    return out


def _kernel_route(r: Route) -> bool:
    """Routes the kernel adds by itself with addresses and links: local,
    broadcast and multicast entries, and IPv6's fe80::/64 per link."""
    return r.kind in ("local", "broadcast", "multicast") or r.dst.startswith("fe80::")


def _iface(r: Route, ns: Namespace) -> str | None:
    return _name(ns, r.oif) if r.oif is not None else None


def _fdb_key(e: FdbEntry, ns: Namespace) -> str:
    flags = [f for f in e.flags if f in ("permanent", "static")] or ["learned"]
    vlan = f" vlan {e.vlan}" if e.vlan is not None else ""
    return f"{e.mac} on {_name(ns, e.ifindex)}{vlan} ({flags[0]})"


def _kernel_fdb(e: FdbEntry, ns: Namespace) -> bool:
    """Entries the kernel keeps by itself: multicast MACs, and the permanent
    entries for the MACs of the namespace's own interfaces (a port's own)."""
    first = int(e.mac.split(":")[0], 16) if e.mac else 0
    own = "permanent" in e.flags and any(i.mac == e.mac for i in ns.interfaces)
    return bool(first & 1) or own


def _fdb_changes(old: Namespace, new: Namespace) -> list[Change]:
    a = {_fdb_key(e, old): e for e in old.fdb if not _kernel_fdb(e, old)}
    b = {_fdb_key(e, new): e for e in new.fdb if not _kernel_fdb(e, new)}
    out = [
        Change("fdb", f"fdb {k} added", _name(new, b[k].ifindex)) for k in sorted(set(b) - set(a))
    ]
    out += [
        Change("fdb", f"fdb {k} removed", _name(old, a[k].ifindex)) for k in sorted(set(a) - set(b))
    ]
    return out
