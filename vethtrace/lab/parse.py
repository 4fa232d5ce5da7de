"""Checking a lab scenario's TOML, table by table, into the dataclasses of scenario.py.

Everything a builder could trip over later (unknown keys, namespaces or
devices referenced but not declared, bad CIDRs, sysctls outside the
per-namespace net.* tree) is rejected here, before anything is created, with
one line naming the file and the problem. Format reference:
vethtrace/lab/scenarios/README.md.

Over 400 lines: one function per table of the format, with the
cross-references between tables (_Declared) that need them all in one place.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vethtrace.errors import UserError
from vethtrace.lab import cni, parse_docker, parse_expect, parse_overlay
from vethtrace.lab import tomlcheck as tc
from vethtrace.lab.scenario import (
    BOND_MODES,
    IPVLAN_MODES,
    LINK_KINDS,
    MACVLAN_MODES,
    PORT_STATES,
    SYSCTL_PREFIXES,
    CniStep,
    DockerSetup,
    Link,
    Listen,
    Neigh,
    Netns,
    PingExpect,
    PortOptions,
    Route,
    Scenario,
    TcpExpect,
)

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_MAC = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


def parse(data: dict[str, Any], path: Path) -> Scenario:
    """Check and convert one parsed TOML document; errors name the file."""
    try:
        return _parse(data, path)
    except tc.Bad as exc:
        raise UserError(f"{path}: {exc}") from None


def _parse(data: dict[str, Any], path: Path) -> Scenario:
    top = tc.keys(
        data,
        "top level",
        {"name", "summary", "netns"},
        {"description", "bridge", "veth", "link", "route", "neigh", "fdb", "cni", "listen",
         "docker", "expect"},
    )
    name = tc.typed(top["name"], str, "top level", "name")
    if name != path.stem:
        raise tc.Bad(f"name {name!r} must match the file name {path.stem!r}")
    namespaces = _namespaces(top)
    links = _bridges(top) + _veths(top) + _links(top)
    declared = _Declared([n.name for n in namespaces], links)
    declared.check_links()
    routes = [_route(t, i, declared) for i, t in enumerate(tc.tables(top, "route"), 1)]
    neighs = [_neigh(t, i, declared) for i, t in enumerate(tc.tables(top, "neigh"), 1)]
    fdb = [parse_overlay.fdb(t, i, declared) for i, t in enumerate(tc.tables(top, "fdb"), 1)]
    declared.cni = [_cni(t, i, declared) for i, t in enumerate(tc.tables(top, "cni"), 1)]
    listens = [_listen(t, i, declared) for i, t in enumerate(tc.tables(top, "listen"), 1)]
    if "docker" in top:
        declared.docker = parse_docker.docker(top["docker"], declared.ns_names)
    expect = parse_expect.expect(top.get("expect", {}), declared)
    declared.check_targets("ping", expect.pings)
    declared.check_targets("tcp", expect.tcp)
    description = tc.typed(top.get("description", ""), str, "top level", "description")
    return Scenario(
        name=name,
        summary=tc.typed(top["summary"], str, "top level", "summary"),
        description=description.strip(),
        path=path,
        netns=namespaces,
        links=links,
        routes=routes,
        neighs=neighs,
        fdb=fdb,
        cni=declared.cni,
        listen=listens,
        docker=declared.docker,
        expect=expect,
    )


def _namespaces(top: dict[str, Any]) -> list[Netns]:
    namespaces = [_netns(t, i) for i, t in enumerate(tc.tables(top, "netns"), 1)]
    if not namespaces:
        raise tc.Bad("at least one [[netns]] is needed")
    ns_names = [n.name for n in namespaces]
    for n in ns_names:
        if ns_names.count(n) > 1:
            raise tc.Bad(f"netns {n!r} is declared twice")
    return namespaces


def _bridges(top: dict[str, Any]) -> list[Link]:
    links = []
    for i, t in enumerate(tc.tables(top, "bridge"), 1):
        where = f"[[bridge]] #{i}"
        t = tc.keys(t, where, {"netns", "name"}, _IFACE_KEYS | {"stp", "vlan_filtering"})
        link = _iface(t, where, "bridge")
        link.stp = tc.typed(t.get("stp", False), bool, where, "stp")
        vlan_filtering = t.get("vlan_filtering", False)
        link.vlan_filtering = tc.typed(vlan_filtering, bool, where, "vlan_filtering")
        links.append(link)
    return links


def _veths(top: dict[str, Any]) -> list[Link]:
    links = []
    for i, t in enumerate(tc.tables(top, "veth"), 1):
        where = f"[[veth]] #{i}"
        t = tc.keys(t, where, {"a", "b"}, set())
        a = _iface(
            tc.keys(t["a"], f"{where} a", {"netns", "name"}, _IFACE_KEYS), f"{where} a", "veth"
        )
        b = _iface(
            tc.keys(t["b"], f"{where} b", {"netns", "name"}, _IFACE_KEYS), f"{where} b", "veth"
        )
        a.peer, b.peer = (b.netns, b.name), (a.netns, a.name)
        links += [a, b]
    return links


def _links(top: dict[str, Any]) -> list[Link]:
    links = []
    for i, t in enumerate(tc.tables(top, "link"), 1):
        where = f"[[link]] #{i}"
        extra = parse_overlay.VXLAN_KEYS if t.get("kind") == "vxlan" else set()
        t = tc.keys(t, where, {"netns", "name", "kind"}, _IFACE_KEYS | {"lower", "mode"} | extra)
        kind = t["kind"]
        if kind not in LINK_KINDS:
            raise tc.Bad(
                f"{where}: kind {kind!r} is not one of {', '.join(LINK_KINDS)}"
                " (bridges and veths have their own tables)"
            )
        link = _iface(t, where, kind)
        where = f"{where} {link.name!r}"
        modes = {"macvlan": MACVLAN_MODES, "ipvlan": IPVLAN_MODES, "bond": BOND_MODES}.get(kind)
        if "mode" in t:
            if modes is None or t["mode"] not in modes:
                allowed = ", ".join(modes) if modes else "none for this kind"
                raise tc.Bad(f"{where}: mode {t['mode']!r} not allowed (allowed: {allowed})")
            link.mode = t["mode"]
        if kind in ("macvlan", "ipvlan"):
            if "lower" not in t:
                raise tc.Bad(f'{where}: a {kind} needs lower = "<link in the same netns>"')
            link.lower = tc.typed(t["lower"], str, where, "lower")
        elif "lower" in t:
            raise tc.Bad(f"{where}: lower only applies to macvlan and ipvlan")
        if kind == "vxlan":
            link.vxlan = parse_overlay.vxlan(t, where)
        links.append(link)
    return links


class _Declared:
    """The namespaces and links a scenario declares: what every later table may
    refer to, and the checks of those references."""

    def __init__(self, ns_names: list[str], links: list[Link]) -> None:
        self.ns_names = ns_names
        self.links = links
        self.cni: list[CniStep] = []  # set once parsed: they add interfaces and addresses
        self.docker: DockerSetup | None = None  # likewise: bridges, containers, addresses

    def check_ns(self, ns: str, where: str, containers: bool = False) -> None:
        """A declared namespace; with `containers`, a lab container (`docker:NAME`) too."""
        if containers and self.docker is not None and self.docker.container(ns):
            return
        if ns not in self.ns_names:
            extra = " (or a [[docker.container]] as docker:NAME)" if containers else ""
            raise tc.Bad(f"{where}: netns {ns!r} is not declared in [[netns]]{extra}")

    def find(self, ns: str, dev: str) -> Link | None:
        return next((lk for lk in self.links if lk.netns == ns and lk.name == dev), None)

    def named(self, ns: str, dev: str) -> bool:
        """A declared link, or an interface a CNI step makes (a culprit may name it)."""
        made = {pair for step in self.cni for pair in step.interfaces()}
        if self.docker is not None:
            made |= {(self.docker.netns, n.bridge) for n in self.docker.networks}
            box = self.docker.container(ns)
            if box is not None:  # Docker names a container's interfaces eth0, eth1... in order
                made |= {(ns, f"eth{i}") for i in range(len(box.networks))}
        return self.find(ns, dev) is not None or (ns, dev) in made

    def check_links(self) -> None:
        """Each link in a declared namespace, once; masters, port options and
        lower devices refer to suitable links of the same namespace."""
        seen: set[tuple[str, str]] = set()
        for link in self.links:
            where = f"{link.kind} {link.name!r}"
            self.check_ns(link.netns, where)
            if (link.netns, link.name) in seen:
                raise tc.Bad(f"{where}: declared twice in netns {link.netns!r}")
            seen.add((link.netns, link.name))
        for link in self.links:
            where = f"{link.kind} {link.name!r} in {link.netns!r}"
            if link.master is not None:
                m = self.find(link.netns, link.master)
                if m is None or m.kind not in ("bridge", "bond"):
                    raise tc.Bad(
                        f"{where}: master {link.master!r} is not a bridge or bond in the same netns"
                    )
            if link.port is not None:
                m = self.find(link.netns, link.master) if link.master else None
                if m is None or m.kind != "bridge":
                    raise tc.Bad(f"{where}: port options need master = a bridge")
                if link.port.state is not None and m.stp:
                    raise tc.Bad(f"{where}: port state cannot be forced while {m.name} runs STP")
            if link.lower is not None and self.find(link.netns, link.lower) is None:
                raise tc.Bad(f"{where}: lower {link.lower!r} is not a link in the same netns")
            dev = link.vxlan.dev if link.vxlan else None
            if dev is not None and self.find(link.netns, dev) is None:
                raise tc.Bad(f"{where}: dev {dev!r} is not a link in the same netns")

    def check_targets(self, kind: str, targets: Sequence[PingExpect | TcpExpect]) -> None:
        """Each expected ping or connection goes to an address its target namespace
        holds: one of its links' or one a CNI step pins."""
        for i, target in enumerate(targets, 1):
            cidrs = [a for lk in self.links if lk.netns == target.netns for a in lk.addresses]
            cidrs += [a for c in self.cni if c.container == target.netns for a in c.addresses]
            box = self.docker.container(target.netns) if self.docker else None
            cidrs += [f"{ip}/32" for ip in box.networks.values()] if box else []
            if self.docker is not None and self.docker.netns == target.netns:
                cidrs += self.docker.gateways()
            owned = {str(ipaddress.ip_interface(a).ip) for a in cidrs}
            if target.to not in owned:
                raise tc.Bad(
                    f"[[expect.{kind}]] #{i}: {target.to} is not an address of netns "
                    f"{target.netns!r} (it has: {', '.join(sorted(owned)) or 'none'})"
                )


def _route(t: Any, i: int, declared: _Declared) -> Route:
    where = f"[[route]] #{i}"
    t = tc.keys(t, where, {"netns", "dst"}, {"via", "dev", "metric", "onlink"})
    declared.check_ns(t["netns"], where)
    dst = tc.typed(t["dst"], str, where, "dst")
    if dst != "default":
        try:
            ipaddress.ip_network(dst)
        except ValueError:
            raise tc.Bad(f'{where}: dst {dst!r} is not "default" or a network CIDR') from None
    route = Route(netns=t["netns"], dst=dst)
    if "via" in t:
        route.via = tc.ip(t["via"], where, "via")
    if "dev" in t:
        route.dev = tc.typed(t["dev"], str, where, "dev")
        if route.dev != "lo" and declared.find(route.netns, route.dev) is None:
            raise tc.Bad(f"{where}: dev {route.dev!r} is not a link in netns {route.netns!r}")
    if route.via is None and route.dev is None:
        raise tc.Bad(f"{where}: a route needs via, dev or both")
    if "metric" in t:
        route.metric = tc.typed(t["metric"], int, where, "metric")
    route.onlink = tc.typed(t.get("onlink", False), bool, where, "onlink")
    if route.onlink and (route.via is None or route.dev is None):
        raise tc.Bad(f"{where}: onlink needs both via and dev")
    return route


def _neigh(t: Any, i: int, declared: _Declared) -> Neigh:
    where = f"[[neigh]] #{i}"
    t = tc.keys(t, where, {"netns", "dev", "ip", "mac"}, set())
    declared.check_ns(t["netns"], where)
    if declared.find(t["netns"], t["dev"]) is None:
        raise tc.Bad(f"{where}: dev {t['dev']!r} is not a link in netns {t['netns']!r}")
    if not isinstance(t["mac"], str) or not _MAC.match(t["mac"]):
        raise tc.Bad(f"{where}: mac {t['mac']!r} is not like 02:00:00:00:00:01")
    return Neigh(t["netns"], t["dev"], tc.ip(t["ip"], where, "ip"), t["mac"])


_CNI_KEYS = {"runtime", "addresses", "up"}


def _cni(t: Any, i: int, declared: _Declared) -> CniStep:
    """A [[cni]] table; what its `config` may say is lab/cni.py's (plugins_of)."""
    where = f"[[cni]] #{i}"
    t = tc.keys(t, where, {"netns", "container", "ifname", "config"}, _CNI_KEYS)
    for key in ("netns", "container", "ifname", "config"):
        tc.typed(t[key], str, where, key)
    for key in ("netns", "container"):
        declared.check_ns(t[key], f"{where} {key}")
    if t["netns"] == t["container"]:
        raise tc.Bad(f"{where}: container must be another namespace than netns")
    if not _IFNAME.match(t["ifname"]) or t["ifname"] == "lo":
        raise tc.Bad(f"{where}: ifname {t['ifname']!r} is not a usable interface name")
    name, version, plugins = cni.plugins_of(t["config"], where)
    runtime = t.get("runtime", {})
    if not isinstance(runtime, dict):
        raise tc.Bad(f"{where}: runtime must be a table (e.g. portMappings = [...])")
    addresses = tc.typed(t.get("addresses", []), list, where, "addresses")
    return CniStep(
        netns=t["netns"],
        container=t["container"],
        ifname=t["ifname"],
        name=name,
        version=version,
        plugins=plugins,
        runtime=dict(runtime),
        addresses=[tc.cidr(a, where) for a in addresses],
        up=tc.typed(t.get("up", True), bool, where, "up"),
    )


def _listen(t: Any, i: int, declared: _Declared) -> Listen:
    where = f"[[listen]] #{i}"
    t = tc.keys(t, where, {"netns", "port"}, set())
    declared.check_ns(t["netns"], where)
    return Listen(t["netns"], tc.port(t["port"], where))


_PORT_FLAGS = ("isolated", "hairpin", "learning", "flood")


def _port(value: Any, where: str) -> PortOptions:
    t = tc.keys(value, f"{where} port", set(), {"state", *_PORT_FLAGS})
    state = t.get("state")
    if state == "blocking":
        raise tc.Bad(
            f"{where}: port state 'blocking' cannot be forced without STP (the kernel "
            "makes a designated port forwarding again at once); use stp = true"
        )
    if state is not None and state not in PORT_STATES:
        raise tc.Bad(f"{where}: port state {state!r} is not one of {', '.join(PORT_STATES)}")
    opts = PortOptions(state=state)
    for key in _PORT_FLAGS:
        if key in t:
            setattr(opts, key, tc.typed(t[key], bool, where, f"port {key}"))
    return opts


_IFACE_KEYS = {"addresses", "master", "up", "mtu", "mac", "port"}


def _iface(t: dict[str, Any], where: str, kind: str) -> Link:
    name = tc.typed(t["name"], str, where, "name")
    if not _IFNAME.match(name) or name == "lo":
        raise tc.Bad(f"{where}: {name!r} is not a usable interface name (1-15 chars, not lo)")
    link = Link(netns=tc.typed(t["netns"], str, where, "netns"), name=name, kind=kind)
    where = f"{where} {name!r}"
    link.addresses = [
        tc.cidr(a, where) for a in tc.typed(t.get("addresses", []), list, where, "addresses")
    ]
    if "master" in t:
        link.master = tc.typed(t["master"], str, where, "master")
    link.up = tc.typed(t.get("up", True), bool, where, "up")
    if "mtu" in t:
        link.mtu = tc.typed(t["mtu"], int, where, "mtu")
        if not 68 <= link.mtu <= 65535:
            raise tc.Bad(f"{where}: mtu {link.mtu} out of range 68-65535")
    if "mac" in t:
        link.mac = tc.typed(t["mac"], str, where, "mac")
        if not _MAC.match(link.mac):
            raise tc.Bad(f"{where}: mac {link.mac!r} is not like 02:00:00:00:00:01")
    if "port" in t:
        link.port = _port(t["port"], where)
    return link


def _netns(t: Any, i: int) -> Netns:
    where = f"[[netns]] #{i}"
    t = tc.keys(t, where, {"name"}, {"lo", "sysctl", "nft", "iptables"})
    name = tc.typed(t["name"], str, where, "name")
    if not _NAME.match(name):
        raise tc.Bad(f"{where}: name {name!r} must be lower-case letters, digits, '-'")
    where = f"netns {name!r}"
    lo = t.get("lo", "up")
    if lo not in ("up", "down"):
        raise tc.Bad(f'{where}: lo must be "up" or "down"')
    sysctl: dict[str, str] = {}
    raw = t.get("sysctl", {})
    if not isinstance(raw, dict):
        raise tc.Bad(f'{where}: sysctl must be a table like {{ "net.ipv4.ip_forward" = 1 }}')
    for key, value in raw.items():
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, str | int):
            raise tc.Bad(
                f"{where}: sysctl {key!r} must be a string or an integer"
                ' (quote dotted names: "net.ipv4.ip_forward" = 1)'
            )
        if not key.startswith(SYSCTL_PREFIXES) or ".." in key or "/" in key:
            raise tc.Bad(f"{where}: sysctl {key!r} is not a per-namespace net.* setting")
        sysctl[key] = str(value)
    nft, iptables = t.get("nft"), t.get("iptables")
    if nft is not None:
        tc.typed(nft, str, where, "nft")
    if iptables is not None:
        tc.typed(iptables, str, where, "iptables")
        if "COMMIT" not in iptables:
            raise tc.Bad(f"{where}: iptables is iptables-save text (*filter ... COMMIT)")
    return Netns(name=name, lo=lo == "up", sysctl=sysctl, nft=nft, iptables=iptables)
