"""Lab scenarios: TOML data files (vethtrace/lab/scenarios/*.toml) turned into checked dataclasses.

Scenarios are data, not code, so users can read and write them without Python,
and tests can use their stated expectations. Everything a builder could trip
over later (unknown keys, namespaces or devices referenced but not declared,
bad CIDRs, sysctls outside the per-namespace net.* tree) is rejected here,
before anything is created, with one line naming the file and the problem.
Format reference: vethtrace/lab/scenarios/README.md.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vethtrace.errors import UserError
from vethtrace.packaged import packaged

VERDICTS = ("delivered", "diverted", "dropped", "no-reply", "unreachable")
LINK_KINDS = ("dummy", "macvlan", "ipvlan", "bond")
PORT_STATES = {"disabled": 0, "listening": 1, "learning": 2, "forwarding": 3, "blocking": 4}
MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8, "source": 16}
IPVLAN_MODES = {"l2": 0, "l3": 1, "l3s": 2}
BOND_MODES = {
    "balance-rr": 0,
    "active-backup": 1,
    "balance-xor": 2,
    "broadcast": 3,
    "802.3ad": 4,
    "balance-tlb": 5,
    "balance-alb": 6,
}
# Only sysctls that live in each namespace's own /proc/sys/net view; anything
# else would change the whole machine.
SYSCTL_PREFIXES = ("net.ipv4.", "net.ipv6.", "net.bridge.", "net.netfilter.", "net.core.")

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_MAC = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


@dataclass
class PortOptions:
    """Bridge-port settings; `state` can only be forced while the bridge runs no STP."""

    state: str | None = None
    isolated: bool | None = None
    hairpin: bool | None = None
    learning: bool | None = None


@dataclass
class Link:
    """One interface to create. kind: veth | bridge | dummy | macvlan | ipvlan | bond."""

    netns: str
    name: str
    kind: str
    addresses: list[str] = field(default_factory=list)
    master: str | None = None
    up: bool = True
    mtu: int | None = None
    mac: str | None = None
    port: PortOptions | None = None
    peer: tuple[str, str] | None = None  # veth: (netns, name) of the other end
    lower: str | None = None  # macvlan/ipvlan: the link it sits on
    mode: str | None = None  # macvlan/ipvlan/bond mode
    stp: bool = False  # bridge
    vlan_filtering: bool = False  # bridge


@dataclass
class Netns:
    name: str
    lo: bool = True  # lo up (a fresh namespace has it down; real hosts have it up)
    sysctl: dict[str, str] = field(default_factory=dict)
    nft: str | None = None  # an nft ruleset loaded inside the namespace


@dataclass
class Route:
    netns: str
    dst: str  # "default" or a CIDR
    via: str | None = None
    dev: str | None = None
    metric: int | None = None


@dataclass
class Neigh:
    netns: str
    dev: str
    ip: str
    mac: str


@dataclass
class PingExpect:
    """`vethtrace ping --from SOURCE NETNS TO` should (ok) or should not reach TO."""

    source: str
    netns: str
    to: str
    ok: bool
    size: int | None = None  # payload bytes; sent with "don't fragment"


@dataclass
class Culprit:
    netns: str
    interface: str | None


@dataclass
class Expect:
    pings: list[PingExpect] = field(default_factory=list)
    verdict: str | None = None
    culprit: Culprit | None = None
    reason: str | None = None
    rules: list[str] = field(default_factory=list)


@dataclass
class Scenario:
    name: str
    summary: str
    description: str
    path: Path
    netns: list[Netns]
    links: list[Link]
    routes: list[Route] = field(default_factory=list)
    neighs: list[Neigh] = field(default_factory=list)
    expect: Expect = field(default_factory=Expect)

    @property
    def broken(self) -> bool:
        """Broken: something is misconfigured on purpose — a verdict other than delivered,
        a ping expected to fail, or a culprit / check rules named."""
        exp = self.expect
        if exp.verdict not in (None, "delivered") or exp.culprit or exp.rules:
            return True
        return any(not p.ok for p in exp.pings)

    def links_in(self, netns: str) -> list[Link]:
        return [link for link in self.links if link.netns == netns]

    def link(self, netns: str, name: str) -> Link | None:
        for link in self.links:
            if link.netns == netns and link.name == name:
                return link
        return None


# ---------------------------------------------------------------- finding files


def shipped_dir() -> Path:
    """Where the shipped scenarios live: package data (vethtrace/lab/scenarios)."""
    return packaged("lab", "scenarios")


def labs_dir() -> Path:
    """The scenarios in use: the shipped ones, or VETHTRACE_LABS (a folder of .toml files)."""
    env = os.environ.get("VETHTRACE_LABS")
    return Path(env) if env else shipped_dir()


def scenario_paths() -> list[Path]:
    return sorted(labs_dir().glob("*.toml"), key=lambda p: p.stem)


def scenarios() -> list[str]:
    """Names of every scenario shipped (file stems), sorted."""
    return [p.stem for p in scenario_paths()]


def load(name: str) -> Scenario:
    """A scenario by name (NAME.toml in labs_dir()) or by path to a .toml file."""
    if name.endswith(".toml") or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"no scenario file {name}")
    else:
        path = labs_dir() / f"{name}.toml"
        if not path.is_file():
            known = ", ".join(scenarios()) or "none"
            raise UserError(f"unknown lab scenario {name!r} (known: {known})")
    return load_path(path)


def load_path(path: Path) -> Scenario:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None
    return parse(data, path)


# ---------------------------------------------------------------- parsing


class _Bad(Exception):
    pass


def _keys(table: Any, where: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise _Bad(f"{where} must be a table")
    unknown = sorted(set(table) - required - optional)
    if unknown:
        allowed = ", ".join(sorted(required | optional))
        raise _Bad(f"{where}: unknown key {unknown[0]!r} (allowed: {allowed})")
    missing = sorted(required - set(table))
    if missing:
        raise _Bad(f"{where}: missing key {missing[0]!r}")
    return table


def _typed(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if isinstance(value, bool) and kind is int:
        raise _Bad(f"{where}: {what} must be an integer")
    if not isinstance(value, kind):
        names = {str: "a string", bool: "true or false", int: "an integer", list: "a list"}
        label = names.get(kind, str(kind)) if isinstance(kind, type) else "of another type"
        raise _Bad(f"{where}: {what} must be {label}")
    return value


def _list(table: dict[str, Any], key: str) -> list[Any]:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise _Bad(f"[[{key}]] must be an array of tables (write [[{key}]])")
    return value


def _cidr(value: Any, where: str) -> str:
    _typed(value, str, where, "an address")
    if "/" not in value:
        raise _Bad(f"{where}: address {value!r} needs a prefix length (e.g. {value}/24)")
    try:
        ipaddress.ip_interface(value)
    except ValueError:
        raise _Bad(f"{where}: {value!r} is not a valid address/prefix") from None
    return str(value)


def _ip(value: Any, where: str, what: str) -> str:
    _typed(value, str, where, what)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise _Bad(f"{where}: {what} {value!r} is not an IP address") from None
    return str(value)


def _port(value: Any, where: str) -> PortOptions:
    t = _keys(value, f"{where} port", set(), {"state", "isolated", "hairpin", "learning"})
    state = t.get("state")
    if state == "blocking":
        raise _Bad(
            f"{where}: port state 'blocking' cannot be forced without STP (the kernel "
            "makes a designated port forwarding again at once); use stp = true"
        )
    if state is not None and state not in PORT_STATES:
        raise _Bad(f"{where}: port state {state!r} is not one of {', '.join(PORT_STATES)}")
    opts = PortOptions(state=state)
    for key in ("isolated", "hairpin", "learning"):
        if key in t:
            setattr(opts, key, _typed(t[key], bool, where, f"port {key}"))
    return opts


_IFACE_KEYS = {"addresses", "master", "up", "mtu", "mac", "port"}


def _iface(t: dict[str, Any], where: str, kind: str) -> Link:
    name = _typed(t["name"], str, where, "name")
    if not _IFNAME.match(name) or name == "lo":
        raise _Bad(f"{where}: {name!r} is not a usable interface name (1-15 chars, not lo)")
    link = Link(netns=_typed(t["netns"], str, where, "netns"), name=name, kind=kind)
    where = f"{where} {name!r}"
    link.addresses = [
        _cidr(a, where) for a in _typed(t.get("addresses", []), list, where, "addresses")
    ]
    if "master" in t:
        link.master = _typed(t["master"], str, where, "master")
    link.up = _typed(t.get("up", True), bool, where, "up")
    if "mtu" in t:
        link.mtu = _typed(t["mtu"], int, where, "mtu")
        if not 68 <= link.mtu <= 65535:
            raise _Bad(f"{where}: mtu {link.mtu} out of range 68-65535")
    if "mac" in t:
        link.mac = _typed(t["mac"], str, where, "mac")
        if not _MAC.match(link.mac):
            raise _Bad(f"{where}: mac {link.mac!r} is not like 02:00:00:00:00:01")
    if "port" in t:
        link.port = _port(t["port"], where)
    return link


def _netns(t: Any, i: int) -> Netns:
    where = f"[[netns]] #{i}"
    t = _keys(t, where, {"name"}, {"lo", "sysctl", "nft"})
    name = _typed(t["name"], str, where, "name")
    if not _NAME.match(name):
        raise _Bad(f"{where}: name {name!r} must be lower-case letters, digits, '-'")
    where = f"netns {name!r}"
    lo = t.get("lo", "up")
    if lo not in ("up", "down"):
        raise _Bad(f'{where}: lo must be "up" or "down"')
    sysctl: dict[str, str] = {}
    raw = t.get("sysctl", {})
    if not isinstance(raw, dict):
        raise _Bad(f'{where}: sysctl must be a table like {{ "net.ipv4.ip_forward" = 1 }}')
    for key, value in raw.items():
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, str | int):
            raise _Bad(
                f"{where}: sysctl {key!r} must be a string or an integer"
                ' (quote dotted names: "net.ipv4.ip_forward" = 1)'
            )
        if not key.startswith(SYSCTL_PREFIXES) or ".." in key or "/" in key:
            raise _Bad(f"{where}: sysctl {key!r} is not a per-namespace net.* setting")
        sysctl[key] = str(value)
    nft = t.get("nft")
    if nft is not None:
        _typed(nft, str, where, "nft")
    return Netns(name=name, lo=lo == "up", sysctl=sysctl, nft=nft)


def parse(data: dict[str, Any], path: Path) -> Scenario:
    """Check and convert one parsed TOML document; errors name the file."""
    try:
        return _parse(data, path)
    except _Bad as exc:
        raise UserError(f"{path}: {exc}") from None


def _parse(data: dict[str, Any], path: Path) -> Scenario:
    top = _keys(
        data,
        "top level",
        {"name", "summary", "netns"},
        {"description", "bridge", "veth", "link", "route", "neigh", "expect"},
    )
    name = _typed(top["name"], str, "top level", "name")
    if name != path.stem:
        raise _Bad(f"name {name!r} must match the file name {path.stem!r}")
    namespaces = [_netns(t, i) for i, t in enumerate(_list(top, "netns"), 1)]
    if not namespaces:
        raise _Bad("at least one [[netns]] is needed")
    ns_names = [n.name for n in namespaces]
    for n in ns_names:
        if ns_names.count(n) > 1:
            raise _Bad(f"netns {n!r} is declared twice")

    links: list[Link] = []
    for i, t in enumerate(_list(top, "bridge"), 1):
        where = f"[[bridge]] #{i}"
        t = _keys(t, where, {"netns", "name"}, _IFACE_KEYS | {"stp", "vlan_filtering"})
        link = _iface(t, where, "bridge")
        link.stp = _typed(t.get("stp", False), bool, where, "stp")
        link.vlan_filtering = _typed(t.get("vlan_filtering", False), bool, where, "vlan_filtering")
        links.append(link)
    for i, t in enumerate(_list(top, "veth"), 1):
        where = f"[[veth]] #{i}"
        t = _keys(t, where, {"a", "b"}, set())
        a = _iface(
            _keys(t["a"], f"{where} a", {"netns", "name"}, _IFACE_KEYS), f"{where} a", "veth"
        )
        b = _iface(
            _keys(t["b"], f"{where} b", {"netns", "name"}, _IFACE_KEYS), f"{where} b", "veth"
        )
        a.peer, b.peer = (b.netns, b.name), (a.netns, a.name)
        links += [a, b]
    for i, t in enumerate(_list(top, "link"), 1):
        where = f"[[link]] #{i}"
        t = _keys(t, where, {"netns", "name", "kind"}, _IFACE_KEYS | {"lower", "mode"})
        kind = t["kind"]
        if kind not in LINK_KINDS:
            raise _Bad(
                f"{where}: kind {kind!r} is not one of {', '.join(LINK_KINDS)}"
                " (bridges and veths have their own tables)"
            )
        link = _iface(t, where, kind)
        where = f"{where} {link.name!r}"
        modes = {"macvlan": MACVLAN_MODES, "ipvlan": IPVLAN_MODES, "bond": BOND_MODES}.get(kind)
        if "mode" in t:
            if modes is None or t["mode"] not in modes:
                allowed = ", ".join(modes) if modes else "none for this kind"
                raise _Bad(f"{where}: mode {t['mode']!r} not allowed (allowed: {allowed})")
            link.mode = t["mode"]
        if kind in ("macvlan", "ipvlan"):
            if "lower" not in t:
                raise _Bad(f'{where}: a {kind} needs lower = "<link in the same netns>"')
            link.lower = _typed(t["lower"], str, where, "lower")
        elif "lower" in t:
            raise _Bad(f"{where}: lower only applies to macvlan and ipvlan")
        links.append(link)

    def check_ns(ns: str, where: str) -> None:
        if ns not in ns_names:
            raise _Bad(f"{where}: netns {ns!r} is not declared in [[netns]]")

    def find(ns: str, dev: str) -> Link | None:
        return next((lk for lk in links if lk.netns == ns and lk.name == dev), None)

    seen: set[tuple[str, str]] = set()
    for link in links:
        where = f"{link.kind} {link.name!r}"
        check_ns(link.netns, where)
        if (link.netns, link.name) in seen:
            raise _Bad(f"{where}: declared twice in netns {link.netns!r}")
        seen.add((link.netns, link.name))
    for link in links:
        where = f"{link.kind} {link.name!r} in {link.netns!r}"
        if link.master is not None:
            m = find(link.netns, link.master)
            if m is None or m.kind not in ("bridge", "bond"):
                raise _Bad(
                    f"{where}: master {link.master!r} is not a bridge or bond in the same netns"
                )
        if link.port is not None:
            m = find(link.netns, link.master) if link.master else None
            if m is None or m.kind != "bridge":
                raise _Bad(f"{where}: port options need master = a bridge")
            if link.port.state is not None and m.stp:
                raise _Bad(f"{where}: port state cannot be forced while {m.name} runs STP")
        if link.lower is not None and find(link.netns, link.lower) is None:
            raise _Bad(f"{where}: lower {link.lower!r} is not a link in the same netns")

    routes: list[Route] = []
    for i, t in enumerate(_list(top, "route"), 1):
        where = f"[[route]] #{i}"
        t = _keys(t, where, {"netns", "dst"}, {"via", "dev", "metric"})
        check_ns(t["netns"], where)
        dst = _typed(t["dst"], str, where, "dst")
        if dst != "default":
            try:
                ipaddress.ip_network(dst)
            except ValueError:
                raise _Bad(f'{where}: dst {dst!r} is not "default" or a network CIDR') from None
        route = Route(netns=t["netns"], dst=dst)
        if "via" in t:
            route.via = _ip(t["via"], where, "via")
        if "dev" in t:
            route.dev = _typed(t["dev"], str, where, "dev")
            if route.dev != "lo" and find(route.netns, route.dev) is None:
                raise _Bad(f"{where}: dev {route.dev!r} is not a link in netns {route.netns!r}")
        if route.via is None and route.dev is None:
            raise _Bad(f"{where}: a route needs via, dev or both")
        if "metric" in t:
            route.metric = _typed(t["metric"], int, where, "metric")
        routes.append(route)

    neighs: list[Neigh] = []
    for i, t in enumerate(_list(top, "neigh"), 1):
        where = f"[[neigh]] #{i}"
        t = _keys(t, where, {"netns", "dev", "ip", "mac"}, set())
        check_ns(t["netns"], where)
        if find(t["netns"], t["dev"]) is None:
            raise _Bad(f"{where}: dev {t['dev']!r} is not a link in netns {t['netns']!r}")
        if not isinstance(t["mac"], str) or not _MAC.match(t["mac"]):
            raise _Bad(f"{where}: mac {t['mac']!r} is not like 02:00:00:00:00:01")
        neighs.append(Neigh(t["netns"], t["dev"], _ip(t["ip"], where, "ip"), t["mac"]))

    expect = _expect(top.get("expect", {}), check_ns, find)
    for i, ping in enumerate(expect.pings, 1):
        owned = {
            str(ipaddress.ip_interface(a).ip)
            for lk in links
            if lk.netns == ping.netns
            for a in lk.addresses
        }
        if ping.to not in owned:
            raise _Bad(
                f"[[expect.ping]] #{i}: {ping.to} is not an address of netns "
                f"{ping.netns!r} (it has: {', '.join(sorted(owned)) or 'none'})"
            )
    description = _typed(top.get("description", ""), str, "top level", "description")
    return Scenario(
        name=name,
        summary=_typed(top["summary"], str, "top level", "summary"),
        description=description.strip(),
        path=path,
        netns=namespaces,
        links=links,
        routes=routes,
        neighs=neighs,
        expect=expect,
    )


def _expect(t: Any, check_ns: Any, find: Any) -> Expect:
    t = _keys(t, "[expect]", set(), {"ping", "verdict", "culprit", "reason", "rules"})
    expect = Expect()
    pings = t.get("ping", [])
    if not isinstance(pings, list):
        raise _Bad("[[expect.ping]] must be an array of tables")
    for i, p in enumerate(pings, 1):
        where = f"[[expect.ping]] #{i}"
        p = _keys(p, where, {"from", "netns", "to", "ok"}, {"size"})
        check_ns(p["from"], f"{where} from")
        check_ns(p["netns"], where)
        ping = PingExpect(
            source=p["from"],
            netns=p["netns"],
            to=_ip(p["to"], where, "to"),
            ok=_typed(p["ok"], bool, where, "ok"),
        )
        if "size" in p:
            ping.size = _typed(p["size"], int, where, "size")
        expect.pings.append(ping)
    if "verdict" in t:
        if t["verdict"] not in VERDICTS:
            raise _Bad(f"[expect]: verdict {t['verdict']!r} is not one of {', '.join(VERDICTS)}")
        expect.verdict = t["verdict"]
    if "culprit" in t:
        c = _keys(t["culprit"], "[expect] culprit", {"netns"}, {"interface"})
        check_ns(c["netns"], "[expect] culprit")
        iface = c.get("interface")
        if iface is not None and iface != "lo" and find(c["netns"], iface) is None:
            raise _Bad(
                f"[expect] culprit: interface {iface!r} is not a link in netns {c['netns']!r}"
            )
        expect.culprit = Culprit(netns=c["netns"], interface=iface)
    if "reason" in t:
        expect.reason = _typed(t["reason"], str, "[expect]", "reason")
    rules = _typed(t.get("rules", []), list, "[expect]", "rules")
    for r in rules:
        if not isinstance(r, str) or not re.match(r"^[a-z0-9]+(-[a-z0-9]+)*$", r):
            raise _Bad(f"[expect]: rule id {r!r} must be kebab-case")
    expect.rules = list(rules)
    if expect.verdict not in (None, "delivered") and (
        expect.culprit is None or expect.reason is None
    ):
        raise _Bad("[expect]: a broken scenario (verdict) needs culprit and reason")
    return expect
