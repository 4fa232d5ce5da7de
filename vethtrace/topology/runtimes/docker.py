"""Docker's REST API, and Podman's Docker-compatible one (the same documents):
which containers run, under which name and pid, and which networks the daemon
manages. The parse_* functions are pure (unit tests feed them recorded answers);
the rest are one GET each.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from vethtrace.model import PublishedPort, RuntimeNetwork
from vethtrace.topology.runtimes import listeners
from vethtrace.topology.runtimes.api import Client, NotFound

ICC_OPTION = "com.docker.network.bridge.enable_icc"
BRIDGE_OPTION = "com.docker.network.bridge.name"


@dataclass
class Container:
    runtime: str
    id: str
    name: str
    running: bool
    status: str  # running, exited, paused, created...
    pid: int | None


def parse_inspect(runtime: str, doc: dict[str, Any]) -> Container:
    """GET /containers/{id}/json -> Container."""
    state = doc.get("State") or {}
    pid = int(state.get("Pid") or 0) or None
    status = str(state.get("Status") or ("running" if state.get("Running") else "stopped"))
    return Container(
        runtime, str(doc.get("Id", "")), str(doc.get("Name", "")).lstrip("/"),
        bool(state.get("Running")), status, pid,
    )  # fmt: skip


def parse_list(docs: list[dict[str, Any]]) -> dict[str, str]:
    """GET /containers/json -> {full id: name} of the running containers."""
    out = {}
    for d in docs or []:
        names = d.get("Names") or []
        out[str(d.get("Id", ""))] = str(names[0]).lstrip("/") if names else str(d.get("Id"))[:12]
    return out


def parse_ports(
    docs: list[dict[str, Any]], inspected: dict[str, dict[str, Any]] | None = None
) -> dict[str, list[PublishedPort]]:
    """GET /containers/json?all=1 (and GET /containers/{id}/json of the stopped ones,
    `inspected` by id) -> {network id: published ports of its containers}.

    A port is published on the host, not on a network; it is listed under every
    network its container is attached to (where the DNAT sends it). A running
    container's ports come from the listing (once, though Docker lists each per
    address family); a stopped one has none there — Docker removed its DNAT —
    so its configured bindings (HostConfig.PortBindings) say what the host lost."""
    out: dict[str, list[PublishedPort]] = {}
    for d in docs or []:
        name = (d.get("Names") or ["?"])[0].lstrip("/")
        status = str(d.get("State") or "running")  # listings without State: running only
        nets = (d.get("NetworkSettings") or {}).get("Networks") or {}
        if status == "running":
            raw = [(str(p.get("Type", "tcp")), str(p.get("IP") or "0.0.0.0"),
                    int(p["PublicPort"]), int(p.get("PrivatePort", 0)))
                   for p in d.get("Ports") or [] if p.get("PublicPort")]  # fmt: skip
        else:
            doc = (inspected or {}).get(str(d.get("Id", ""))) or {}
            raw = _bindings((doc.get("HostConfig") or {}).get("PortBindings") or {})
        seen: set[tuple[str, int]] = set()
        ports = []
        for proto, host_ip, host_port, cport in raw:
            if (proto, host_port) not in seen:
                seen.add((proto, host_port))
                ports.append((proto, host_ip, host_port, cport))
        for n in nets.values():
            if not ports or not n.get("NetworkID"):
                continue
            out.setdefault(str(n["NetworkID"]), []).extend(
                PublishedPort(proto, host_ip, host_port, name, cport, running=status == "running",
                              status=status, container_ip=str(n.get("IPAddress") or ""))
                for proto, host_ip, host_port, cport in ports
            )  # fmt: skip
    return out


def _bindings(bindings: dict[str, Any]) -> list[tuple[str, str, int, int]]:
    """HostConfig.PortBindings ({"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}) ->
    (proto, host ip, host port, container port)."""
    out = []
    for spec, hosts in bindings.items():
        cport, _, proto = str(spec).partition("/")
        for h in hosts or []:
            port = str((h or {}).get("HostPort") or "")
            if port.isdigit() and cport.isdigit():
                out.append((proto or "tcp", str(h.get("HostIp") or "0.0.0.0"), int(port),
                            int(cport)))  # fmt: skip
    return out


def parse_network(runtime: str, doc: dict[str, Any]) -> RuntimeNetwork:
    """GET /networks/{id} -> RuntimeNetwork (bridge name: Docker's option, else
    the br-<12 hex of the id> Docker gives user-defined bridges; Podman says it in
    network_interface)."""
    opts = {str(k): str(v) for k, v in (doc.get("Options") or {}).items()}
    nid = str(doc.get("Id", ""))
    driver = str(doc.get("Driver", ""))
    bridge = opts.get(BRIDGE_OPTION) or doc.get("network_interface")
    if not bridge and driver == "bridge" and runtime == "docker":
        bridge = f"br-{nid[:12]}"
    cfg = (doc.get("IPAM") or {}).get("Config") or doc.get("subnets") or []
    subnets = [str(c.get("Subnet") or c.get("subnet")) for c in cfg
               if c.get("Subnet") or c.get("subnet")]  # fmt: skip
    members = {
        str(c.get("Name", cid[:12])): str(c.get("IPv4Address", "")).strip()
        for cid, c in (doc.get("Containers") or {}).items()
    }
    return RuntimeNetwork(
        runtime=runtime, name=str(doc.get("Name", "")), id=nid, driver=driver,
        bridge=str(bridge) if bridge else None, subnets=subnets,
        internal=bool(doc.get("Internal") or doc.get("internal")),
        icc=opts.get(ICC_OPTION, "true").lower() not in ("false", "0"),
        containers=members,
    )  # fmt: skip


# --- one GET each ---------------------------------------------------------------


def inspect(client: Client, ref: str) -> Container:
    """A container by name or (prefix of its) id; NotFound when the runtime has none."""
    return parse_inspect(client.endpoint.runtime, client.get(f"/containers/{quote(ref)}/json"))


def running(client: Client) -> list[dict[str, Any]]:
    docs = client.get("/containers/json")
    return docs if isinstance(docs, list) else []


def networks(client: Client) -> list[RuntimeNetwork]:
    """Every network with its members and the ports published into it: for a running
    container whether a socket listens behind each (listeners.py), for a stopped one
    the bindings it would have."""
    every = client.get("/containers/json?all=1")
    every = every if isinstance(every, list) else []
    inspected = {}
    for d in every:
        stopped = str(d.get("State") or "running") != "running"
        if stopped or d.get("Ports"):  # the pid, or the bindings the listing leaves out
            with contextlib.suppress(NotFound):  # removed meanwhile
                inspected[str(d["Id"])] = client.get(f"/containers/{quote(str(d['Id']))}/json")
    ports = parse_ports(every, inspected)
    bridges = _podman_bridges(client) if client.endpoint.runtime == "podman" else {}
    out = []
    for summary in client.get("/networks") or []:
        nid = summary.get("Id") or summary.get("id") or summary.get("Name")
        doc = client.get(f"/networks/{quote(str(nid))}")
        net = parse_network(client.endpoint.runtime, doc)
        net.bridge = net.bridge or bridges.get(net.id)
        net.published = ports.get(net.id, [])
        net.api = client.url if client.endpoint.explicit else ""
        out.append(net)
    containers = [parse_inspect(client.endpoint.runtime, d) for d in inspected.values()]
    pids = {c.name: c.pid for c in containers}
    for net in out:
        for p in net.published:
            pid = pids.get(p.container)
            if p.running and pid and p.container_ip:
                p.listening = listeners.listening(pid, p.proto, p.container_port, p.container_ip)
    return out


def parse_libpod_networks(docs: list[dict[str, Any]]) -> dict[str, str]:
    """Podman's own GET /libpod/networks/json -> {network id: Linux bridge}: the
    compatible answer leaves the bridge's name out."""
    return {str(d["id"]): str(d["network_interface"]) for d in docs or []
            if d.get("id") and d.get("network_interface")}  # fmt: skip


def _podman_bridges(client: Client) -> dict[str, str]:
    try:
        return parse_libpod_networks(client.get("/v4.0.0/libpod/networks/json"))
    except NotFound:  # Podman 3 (CNI era) answers under another version
        return {}
