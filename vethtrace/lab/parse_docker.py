"""Checking a scenario's `[docker]` table: the lab's own Docker daemon, the networks
it creates and the containers it runs (lab/docker.py builds them).

Split from parse.py because these tables describe what the docker CLI is asked
to do, not links vethtrace makes itself. Everything is checked before anything
starts: names Docker would refuse, addresses outside their network's subnet or
given twice, published ports that collide, networks a container names but the
scenario does not declare. Containers are then namespaces to the rest of the
scenario: expectations and culprits name them `docker:NAME`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from vethtrace.lab import tomlcheck as tc
from vethtrace.lab.scenario import DockerContainer, DockerNetwork, DockerSetup

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,30}$")  # docker accepts more; this is enough
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_PUBLISH = re.compile(r"^(?:(\d+\.\d+\.\d+\.\d+):)?(\d+):(\d+)(?:/(tcp|udp))?$")


def docker(t: Any, ns_names: list[str]) -> DockerSetup:
    t = tc.keys(t, "[docker]", {"netns"}, {"network", "container"})
    netns = tc.typed(t["netns"], str, "[docker]", "netns")
    if netns not in ns_names:
        raise tc.Bad(f"[docker]: netns {netns!r} is not declared in [[netns]]")
    setup = DockerSetup(netns=netns)
    for i, n in enumerate(tc.tables(t, "network"), 1):
        setup.networks.append(_network(n, f"[[docker.network]] #{i}", setup))
    for i, c in enumerate(tc.tables(t, "container"), 1):
        setup.containers.append(_container(c, f"[[docker.container]] #{i}", setup))
    if not setup.containers:
        raise tc.Bad("[docker]: at least one [[docker.container]] is needed")
    return setup


def _network(t: Any, where: str, setup: DockerSetup) -> DockerNetwork:
    t = tc.keys(t, where, {"name", "bridge", "subnet"}, {"internal", "icc"})
    name = tc.typed(t["name"], str, where, "name")
    if not _NAME.match(name) or name in ("bridge", "host", "none"):
        raise tc.Bad(f"{where}: {name!r} is not a usable network name (not bridge/host/none)")
    if any(n.name == name for n in setup.networks):
        raise tc.Bad(f"{where}: network {name!r} is declared twice")
    bridge = tc.typed(t["bridge"], str, where, "bridge")
    if not _IFNAME.match(bridge) or bridge == "docker0":
        raise tc.Bad(f"{where}: bridge {bridge!r} is not a usable interface name")
    subnet = tc.typed(t["subnet"], str, where, "subnet")
    try:
        net = ipaddress.IPv4Network(subnet)
    except ValueError:
        raise tc.Bad(f"{where}: subnet {subnet!r} is not an IPv4 network CIDR") from None
    for other in setup.networks:
        if other.bridge == bridge:
            raise tc.Bad(f"{where}: bridge {bridge!r} is already network {other.name!r}'s")
        if net.overlaps(ipaddress.IPv4Network(other.subnet)):
            raise tc.Bad(f"{where}: subnet {subnet} overlaps network {other.name!r}'s")
    return DockerNetwork(
        name=name, bridge=bridge, subnet=str(net),
        internal=tc.typed(t.get("internal", False), bool, where, "internal"),
        icc=tc.typed(t.get("icc", True), bool, where, "icc"),
    )  # fmt: skip


def _container(t: Any, where: str, setup: DockerSetup) -> DockerContainer:
    t = tc.keys(t, where, {"name", "networks"}, {"command", "publish", "running"})
    name = tc.typed(t["name"], str, where, "name")
    if not _NAME.match(name):
        raise tc.Bad(f"{where}: {name!r} is not a usable container name")
    if any(c.name == name for c in setup.containers):
        raise tc.Bad(f"{where}: container {name!r} is declared twice")
    where = f"{where} {name!r}"
    nets = t["networks"]
    if not isinstance(nets, dict) or not nets:
        raise tc.Bad(f'{where}: networks must be a table like {{ shop = "172.30.1.2" }}')
    taken = {ip for c in setup.containers for ip in c.networks.values()}
    networks: dict[str, str] = {}
    for net_name, addr in nets.items():
        net = next((n for n in setup.networks if n.name == net_name), None)
        if net is None:
            raise tc.Bad(f"{where}: network {net_name!r} is not a [[docker.network]]")
        ip = ipaddress.IPv4Address(tc.ip(addr, where, f"address on {net_name}"))
        subnet = ipaddress.IPv4Network(net.subnet)
        if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address):
            raise tc.Bad(f"{where}: {ip} is not a host address of {net_name} ({subnet})")
        if ip == next(subnet.hosts()):
            raise tc.Bad(f"{where}: {ip} is {net_name}'s gateway (Docker gives it to the bridge)")
        if str(ip) in taken:
            raise tc.Bad(f"{where}: {ip} is given twice")
        taken.add(str(ip))
        networks[net_name] = str(ip)
    command = tc.typed(t.get("command", ["sleep", "100000"]), list, where, "command")
    if not command or not all(isinstance(w, str) and w for w in command):
        raise tc.Bad(f"{where}: command must be a non-empty list of strings")
    publish = tc.typed(t.get("publish", []), list, where, "publish")
    used = {_host_port(p) for c in setup.containers for p in c.publish}
    for p in publish:
        if not isinstance(p, str) or not _PUBLISH.match(p):
            raise tc.Bad(f"{where}: publish {p!r} is not like \"8080:80\" or \"8080:80/udp\"")
        m = _PUBLISH.match(p)
        assert m is not None
        for port in (int(m.group(2)), int(m.group(3))):
            tc.port(port, where)
        if _host_port(p) in used:
            raise tc.Bad(f"{where}: host port of {p!r} is published twice")
        used.add(_host_port(p))
    running = tc.typed(t.get("running", True), bool, where, "running")
    return DockerContainer(name, networks, list(command), list(publish), running)


def _host_port(spec: str) -> tuple[str, int]:
    m = _PUBLISH.match(spec)
    assert m is not None
    return (m.group(4) or "tcp", int(m.group(2)))
