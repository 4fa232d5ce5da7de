"""What ping expects: the plan every verdict is judged against, and how it is made.

`make_plan` works it out from data only (the kernel's route lookup as `ip
route get` printed it, the topology, the inodes of the two namespaces), so it
is the same function live and in tests; `commands.ping` gathers that data.
The plan is stored in ping recordings (header `ping.plan`) and read back by
`report` with `model.from_dict`, so its fields are a file format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vethtrace.model import IfaceKey, Topology
from vethtrace.topology.query import l2_reach, owners_of_ip

# Sniffers opened at most (nearest interfaces first): each is a socket and a thread.
MAX_SNIFFED = 32


@dataclass
class PingPlan:
    """What ping expects, worked out from the route lookup and the topology."""

    source: str  # netns name ("root" by default)
    source_inode: int
    target_netns: str
    target_inode: int
    ip: str
    src_addr: str | None = None  # the source address the kernel picked
    egress: IfaceKey | None = None
    egress_name: str | None = None
    gateway: str | None = None
    route_error: str | None = None
    owners: list[str] = field(default_factory=list)  # "netns/ifname" holding ip
    target_iface: IfaceKey | None = None
    path: list[IfaceKey] = field(default_factory=list)  # interfaces sniffed
    count: int = 1
    timeout: float = 5.0
    size: int = 56  # echo payload bytes
    started_ns: int = 0  # monotonic ns when sending began

    @property
    def nexthop(self) -> str:
        return self.gateway or self.ip


def make_plan(
    source: str,
    source_inode: int,
    target_netns: str,
    target_inode: int,
    ip: str,
    topo: Topology,
    route: dict[str, Any],
    count: int,
    timeout: float,
) -> tuple[PingPlan, list[str]]:
    """Work out what should happen, and warnings for the user. `source` and
    `target_netns` are the names the user gave (used when the topology does
    not name those inodes); `route` is `ip -j route get`'s object, or
    {"error": why} when the lookup failed."""
    warnings: list[str] = []
    plan = PingPlan(
        source=topo.netns_name(source_inode, source),
        source_inode=source_inode,
        target_netns=topo.netns_name(target_inode, target_netns),
        target_inode=target_inode,
        ip=ip,
        count=count,
        timeout=timeout,
    )
    # one entry per interface even if it holds ip twice (same address, two prefix lengths)
    owners = list(dict.fromkeys((ns.name, it.key, it.name) for ns, it in owners_of_ip(topo, ip)))
    plan.owners = [f"{n}/{i}" for n, _k, i in owners]
    in_target = [k for _n, k, _i in owners if k.netns == target_inode]
    if in_target:
        plan.target_iface = in_target[0]
    elif owners:
        warnings.append(f"{ip} is not in {plan.target_netns}: it lives on {', '.join(plan.owners)}")
    else:
        warnings.append(f"no interface in any namespace holds {ip} (nothing can answer)")
    if "error" in route:
        plan.route_error = str(route["error"])
        return plan, warnings
    if route.get("type") == "local" or route.get("dev") == "lo":
        warnings.append(f"{ip} is a local address of {plan.source}: the ping never leaves it")
    plan.gateway = route.get("gateway")
    plan.src_addr = route.get("prefsrc")
    src_ns = topo.netns(source_inode)
    dev = src_ns.iface_by_name(route.get("dev", "")) if src_ns else None
    if dev is not None:
        plan.egress, plan.egress_name = dev.key, dev.name
        path = l2_reach(topo, dev.key, MAX_SNIFFED)
        if plan.target_iface is not None and plan.target_iface not in path:
            path += l2_reach(topo, plan.target_iface, MAX_SNIFFED - len(path))
        plan.path = path
    return plan, warnings
