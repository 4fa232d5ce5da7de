"""Container runtimes' networks (Docker, Podman): isolation they build on purpose.

Docker puts every bridge network's traffic through iptables (br_netfilter with
bridge-nf-call-iptables=1, FORWARD policy drop, its DOCKER, DOCKER-USER and
DOCKER-ISOLATION-STAGE-* chains); a network created with
com.docker.network.bridge.enable_icc=false drops traffic between its own
containers, an --internal one everything leaving it. None of that is a
mistake, so the generic rule that calls a dropping forward path on a bridge an
accident stays quiet where a runtime's firewall is (bridge.py asks
`runtime_firewall`), and these rules say what the runtime's settings mean,
as info, with no fix that would undo the isolation.

What a network is meant to do comes from the runtime's API
(Namespace.runtime_networks, see vethtrace.topology.runtimes); the chains from
the firewall facts, so a daemon that does not answer is still recognised.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator

from vethtrace.diagnose.rules.base import Context, Where, finding, join_names, rule
from vethtrace.model import Finding, Namespace, PublishedPort, RuntimeNetwork

# The regular chains runtimes create (Docker; Podman's netavark and CNI plugins).
RUNTIME_CHAINS = {
    "DOCKER": "docker", "DOCKER-USER": "docker", "DOCKER-ISOLATION-STAGE-1": "docker",
    "DOCKER-ISOLATION-STAGE-2": "docker", "NETAVARK_FORWARD": "podman",
    "CNI-FORWARD": "podman", "CNI-ISOLATION-STAGE-1": "podman",
}  # fmt: skip


def runtime_firewall(ns: Namespace) -> str | None:
    """'docker' or 'podman' when that runtime manages this namespace's firewall."""
    for net in ns.runtime_networks:
        return net.runtime
    for chain in ns.firewall.get("regular_chains") or []:
        owner = RUNTIME_CHAINS.get(chain.rsplit(" ", 1)[-1])
        if owner:
            return owner
    return None


def isolating_network(daemon: Namespace, src: Namespace, dst: str) -> RuntimeNetwork | None:
    """The runtime network of `src` that drops traffic to `dst` on purpose: an internal
    network (nothing leaves its subnets) or one with ICC off (nothing between its
    containers). The path rules leave such drops to this module's info findings."""
    import ipaddress

    try:
        target = ipaddress.ip_address(dst)
    except ValueError:
        return None
    mine = [ipaddress.ip_address(a.address) for i in src.interfaces for a in i.addresses]
    for net in daemon.runtime_networks:
        subnets = [ipaddress.ip_network(s, strict=False) for s in net.subnets]
        if not any(a in n for a in mine for n in subnets):
            continue
        inside = any(target in n for n in subnets)
        if (net.internal and not inside) or (not net.icc and inside):
            return net
    return None


def managed_network(ns: Namespace, bridge: str) -> RuntimeNetwork | None:
    """The runtime network whose Linux bridge is `bridge` in ns, if any."""
    return next((n for n in ns.runtime_networks if n.bridge == bridge), None)


def network_of(ns: Namespace, ip: str) -> RuntimeNetwork | None:
    """The runtime network in ns whose subnet holds address `ip`, if any."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    for net in ns.runtime_networks:
        for subnet in net.subnets:
            with contextlib.suppress(ValueError):
                if addr in ipaddress.ip_network(subnet, strict=False):
                    return net
    return None


def _networks(ctx: Context) -> Iterator[tuple[Where | Namespace, RuntimeNetwork]]:
    for ns in ctx.topo.namespaces:
        for net in ns.runtime_networks:
            br = ns.iface_by_name(net.bridge or "")
            yield (Where(ns, br) if br is not None else ns), net


@rule("container-icc-disabled",
      "a container network with inter-container communication off (enable_icc=false)")
def icc_disabled(ctx: Context) -> Iterator[Finding]:
    for where, net in _networks(ctx):
        if net.icc or len(net.containers) < 2:
            continue
        names = join_names(sorted(net.containers))
        yield finding(
            "container-icc-disabled", "info", where,
            f"{net.runtime} network {net.name} has ICC off: {names} cannot reach each other",
            f"{net.name} was created with com.docker.network.bridge.enable_icc=false, so "
            f"{net.runtime}'s FORWARD rules drop every packet {net.bridge} bridges from one of "
            f"its containers to another (br_netfilter sends bridged frames through them; "
            f"reason NETFILTER_DROP). They still reach the gateway and the outside. That is "
            f"the network's purpose: containers that must talk share another network "
            f"(`{net.runtime} network connect`).",
        )


@rule("container-network-internal",
      "an internal container network: its containers reach only each other")
def internal_network(ctx: Context) -> Iterator[Finding]:
    for where, net in _networks(ctx):
        if not net.internal or not net.containers:
            continue
        yield finding(
            "container-network-internal", "info", where,
            f"{net.runtime} network {net.name} is internal: "
            f"{join_names(sorted(net.containers))} reach only each other through it",
            f"An --internal network gets no default route and {net.runtime}'s isolation "
            f"rules drop what would leave {net.bridge} for another interface, so its "
            f"containers reach nothing outside {join_names(net.subnets) or 'its subnet'} "
            f"through it. Connect a container to a second network for outside access.",
        )


def _cli(net: RuntimeNetwork) -> str:
    """The runtime's CLI, pointed at the daemon the facts came from when not its default."""
    return f"{net.runtime} -H {net.api}" if net.api else net.runtime


def _ports(ctx: Context) -> Iterator[tuple[Where | Namespace, RuntimeNetwork, PublishedPort]]:
    """Each published port once (a container on two networks is listed under both)."""
    seen: set[tuple[str, str, int]] = set()
    for where, net in _networks(ctx):
        for p in net.published:
            key = (p.container, p.proto, p.host_port)
            if key not in seen:
                seen.add(key)
                yield where, net, p


def _host(p: PublishedPort) -> str:
    return f"{'host' if p.host_ip in ('0.0.0.0', '::', '') else p.host_ip}:{p.host_port}"


@rule("container-port-stopped", "a published port whose container is stopped")
def port_stopped(ctx: Context) -> Iterator[Finding]:
    for where, net, p in _ports(ctx):
        if p.running:
            continue
        yield finding(
            "container-port-stopped", "warning", where,
            f"{net.runtime} publishes {p.host_port}/{p.proto} to {p.container}, which is "
            f"stopped ({p.status}): nothing answers on {_host(p)}",
            f"{p.container} was started with -p {p.host_port}:{p.container_port}"
            f"{'/udp' if p.proto == 'udp' else ''}, but it is not running. {net.runtime} "
            f"removes a stopped container's DNAT rule and frees its address on "
            f"{net.name}, so a connection to {_host(p)} reaches the host's own stack, "
            f"where no socket listens: TCP clients get a reset (connection refused), UDP "
            f"an ICMP port unreachable. Start the container (or stop sending traffic there).",
            [f"{_cli(net)} start {p.container}"],
        )


@rule("container-port-no-listener",
      "a published port whose container runs but does not listen on the target port")
def port_no_listener(ctx: Context) -> Iterator[Finding]:
    for where, net, p in _ports(ctx):
        if not p.running or p.listening is not False:
            continue
        target = f"{p.container_ip}:{p.container_port}"
        yield finding(
            "container-port-no-listener", "warning", where,
            f"{_host(p)}/{p.proto} is DNAT'd to {p.container} ({target}), where nothing "
            f"listens on port {p.container_port}",
            f"{net.runtime}'s DNAT rule rewrites connections to {_host(p)} to {target} and "
            f"{net.bridge} delivers them, but no {p.proto} socket in {p.container}'s "
            f"namespace is bound to port {p.container_port} on {p.container_ip} or on every "
            f"address (one bound to 127.0.0.1 does not count: DNAT'd packets are addressed "
            f"to {p.container_ip}), so the container's kernel answers with a reset. Start "
            f"the service on 0.0.0.0:{p.container_port}, or publish the port it listens on.",
            [f"{_cli(net)} logs {p.container}   # why the service is not listening",
             f"{_cli(net)} restart {p.container}"],
        )  # fmt: skip
