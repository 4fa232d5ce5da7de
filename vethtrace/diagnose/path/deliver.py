"""IP input's last checks and local delivery: the reverse path filter
(rp_filter strict/loose against the route back), then the INPUT hook, the
ICMP echo sysctls, and for tcp/udp a socket listening on the port
(sock_diag). The reply reaching the sender's socket ends the walk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vethtrace.diagnose.path import netfilter, noroute
from vethtrace.diagnose.path.flow import End, Packet
from vethtrace.diagnose.path.route import (
    RouteResult,
    conf,
    conf_source,
    ip,
    local_address,
    lookup,
)
from vethtrace.model import Interface, Namespace

if TYPE_CHECKING:
    from vethtrace.diagnose.path.walk import Walker


def rpf_failure(
    w: Walker,
    ns: Namespace,
    iface: Interface,
    src: str,
    dst: str,
    oif: Interface | None = None,
    proto: str = "icmp",
    sport: int | None = None,
    dport: int | None = None,
) -> tuple[int, str] | None:
    """__fib_validate_source's reverse path check for a packet from src to dst
    arriving on iface: None when it passes, else (rp_filter mode, why not).
    The route back is looked up as if sent from `oif` (the forward route's
    egress for a forwarded packet: its rules see that iif; "lo" for one
    delivered locally). A route back through iface passes in both modes; strict
    (1) wants nothing else; loose (2) takes any unicast route back, but only
    when iface holds an IPv4 address (no_addr -> last_resort -> e_rpf)."""
    mode = conf(ns, iface, "rp_filter")
    if not mode:
        return None
    back = lookup(
        ns, src, dst, oif.name if oif else "lo", proto, dport, sport, memo=w.floods
    )  # fmt: skip
    if back.kind not in ("unicast", "local"):
        return mode, "no route back"
    if back.oif is not None and back.oif.key == iface.key:
        return None
    via = f"the route back leaves via {noroute.name(back.oif)}, not {iface.name}"
    if mode == 1:
        return mode, via
    if not any(a.family == 4 for a in iface.addresses):
        return mode, f"{via}, and {iface.name} has no IPv4 address (loose mode then drops)"
    return None


def martian_local(w: Walker, ns: Namespace, iface: Interface, src: str) -> bool:
    """fib_validate_source: a source that is one of ns's own addresses is a
    martian unless accept_local is on for iface."""
    return local_address(ns, src, w.floods) is not None and not conf(ns, iface, "accept_local")


def rp_filter(
    w: Walker, ns: Namespace, iface: Interface, pkt: Packet, oif: Interface | None = None
) -> bool:
    """The reverse path check as a hop (see rpf_failure)."""
    if pkt.src is None:
        return True
    failed = rpf_failure(w, ns, iface, pkt.src, pkt.dst, oif, pkt.proto, pkt.sport, pkt.dport)
    if failed is not None:
        mode, how = failed
        src = conf_source(iface, "rp_filter") + f"={mode}"
        w.add(
            ns,
            iface,
            "rp_filter",
            f"reverse path check fails: {how}",
            src,
            "fail",
            f"rp_filter={mode} ({'strict' if mode == 1 else 'loose'}) drops packets "
            f"from {pkt.src} "
            f"arriving on {iface.name}: {how}",
            [
                # never route an underlay address into a VXLAN device (it would
                # encapsulate its own outer packets): loose mode only
                *(
                    []
                    if iface.kind == "vxlan"
                    else [w.cmd(ns, f"ip route add {pkt.src} dev {iface.name}")]
                ),
                *(
                    [
                        w.cmd(
                            ns,
                            "sysctl -w net.ipv4.conf.all.rp_filter=2 "
                            f"net.ipv4.conf.{iface.name}.rp_filter=2",
                        )
                    ]
                    if mode == 1
                    else []
                ),
            ],
        )
        return False
    return True


def deliver(
    w: Walker, ns: Namespace, iface: Interface | None, pkt: Packet, res: RouteResult
) -> End:
    name = iface.name if iface else None
    verdict, hops = netfilter.run_hook(w, ns, "ip", "input", pkt, name, None)
    w.hops += hops
    if verdict != "accept":
        return End("failed")
    if pkt.reply:
        w.add(ns, iface, "deliver", f"{pkt.describe()} reaches the sender's socket", "local")
        return End("delivered", ns, iface, pkt)
    if pkt.proto == "icmp":
        key = (
            "net.ipv4.icmp_echo_ignore_broadcasts"
            if res.kind == "broadcast"
            else "net.ipv4.icmp_echo_ignore_all"
        )
        default = "1" if res.kind == "broadcast" else "0"
        if ns.sysctls.get(key, default) == "1":
            w.add(
                ns,
                iface,
                "deliver",
                "echo request ignored",
                f"sysctl {key}=1",
                "fail",
                f"{key}=1: the kernel answers no echo request"
                + (" sent to a broadcast address" if res.kind == "broadcast" else ""),
                [w.cmd(ns, f"sysctl -w {key}=0")],
            )
            return End("failed")
        w.add(ns, iface, "deliver", f"echo request for {pkt.dst}: answered", f"sysctl {key}=0")
        return End("delivered", ns, iface, pkt)
    sock = next(
        (
            s
            for s in ns.sockets
            if s.proto == pkt.proto
            and s.port == pkt.dport
            and s.address in (pkt.dst, "0.0.0.0", "::", f"::ffff:{pkt.dst}")
            and not (s.family == 6 and s.v6only and ip(pkt.dst).version == 4)
            and s.ifindex in (0, iface.key.ifindex if iface else 0)
        ),
        None,
    )
    if sock is None:
        w.add(
            ns,
            iface,
            "socket",
            f"nothing listens on {pkt.proto}/{pkt.dport}",
            f"sockets of {ns.name} ({pkt.proto})",
            "fail",
            f"no socket in {ns.name} is bound to {pkt.proto} port {pkt.dport}"
            + (
                ": the kernel answers with a TCP reset"
                if pkt.proto == "tcp"
                else ": the kernel answers port unreachable"
            ),
            [w.cmd(ns, f"nc -l{'u' if pkt.proto == 'udp' else ''} -p {pkt.dport}")],
        )
        return End("failed")
    w.add(
        ns,
        iface,
        "socket",
        f"{pkt.proto} socket {sock.address}:{sock.port} takes it",
        f"socket {pkt.proto} {sock.address}:{sock.port}",
    )
    return End("delivered", ns, iface, pkt)
