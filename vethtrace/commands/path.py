"""`vethtrace path`: predict a packet's path from the kernel's tables, forward
and back (no packet is sent); exit 0 when both directions succeed, 1 when not
(or when the model cannot tell), 2 on bad input."""

from __future__ import annotations

import ipaddress
import sys

from vethtrace.errors import ExitStatus, UserError, require_root


def resolve_target(topo: object, target: str, dest: str | None) -> tuple[str, str | None]:
    """(destination address, namespace that should hold it)."""
    from vethtrace.model import Topology
    from vethtrace.topology.query import owners_of_ip

    assert isinstance(topo, Topology)
    if dest is None:
        try:
            ipaddress.ip_address(target)
        except ValueError:
            raise UserError(f"{target!r} is not an IP address (give NETNS and IP, or IP)") from None
        if not owners_of_ip(topo, target):
            raise UserError(f"no namespace holds {target}")
        return target, None
    try:
        ipaddress.ip_address(dest)
    except ValueError:
        raise UserError(f"{dest!r} is not an IP address") from None
    ns = topo.netns_by_name(target)
    if ns is None:
        raise UserError(f"no network namespace named {target!r} (see `ip netns list`)")
    if not any(a.address == dest for i in ns.interfaces for a in i.addresses):
        raise UserError(f"{target} does not hold {dest}")
    return dest, target


def run(
    target: str,
    dest: str | None = None,
    source: str | None = None,
    proto: str = "icmp",
    port: int | None = None,
    as_json: bool = False,
) -> int:
    from vethtrace.diagnose.path import Flow, predict
    from vethtrace.topology import discover

    if proto in ("tcp", "udp"):
        if port is None:
            raise UserError(f"--proto {proto} needs --port")
    elif port is not None:
        raise UserError(f"--port makes no sense with --proto {proto}")
    require_root("reading every namespace")
    topo = discover(sockets=proto in ("tcp", "udp"))  # a listener decides delivery
    src = source or "root"
    if topo.netns_by_name(src) is None:
        raise UserError(f"no network namespace named {src!r} (see `ip netns list`)")
    dst, _owner = resolve_target(topo, target, dest)
    pred = predict(topo, Flow(src, dst, proto, port))
    for hop_ns in {h.netns for h in pred.forward + pred.reply}:
        ns = topo.netns_by_name(hop_ns)
        if ns is not None and ns.nft_error:
            raise UserError(f"cannot read the nftables ruleset of {hop_ns}: {ns.nft_error}")
    if as_json:
        from vethtrace.render.path import to_json

        sys.stdout.write(to_json(pred) + "\n")
    else:
        from vethtrace.console import make_console
        from vethtrace.render.path import show

        show(make_console(), pred)
    return int(ExitStatus.OK if pred.ok else ExitStatus.FINDINGS)
