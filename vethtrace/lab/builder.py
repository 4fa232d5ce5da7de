"""Turning a Scenario into namespaces, links, addresses and routes with pyroute2.

Every netlink call runs in a thread that entered the lab's own namespace
(vethtrace.netns.run_in), and veth pairs are created inside a lab namespace
with the peer placed straight into the other one, so no interface ever
appears in the root namespace, even for an instant. Sysctls are written to
/proc/sys/net from such a thread (that view follows the writing thread's
namespace) and nft rulesets are loaded by an `nft -f -` forked from it.

The order matters: links exist before masters, MTUs and sysctls naming them;
everything is enslaved while still down (bonds insist); bridge-port options
come after carrier is up, or the bridge would reset a forced port state when
the link comes up. Then LAB_STEPS, over the whole lab: the CNI plugins
(lab/cni.py) run after everything the scenario declares (a macvlan master or
the node's uplink must exist), in file order (host-local hands out addresses in
that order), recording each attachment in the lab's state before its ADD; then
the lab's own Docker daemon and its containers (lab/docker.py), recorded before
dockerd starts; then the TCP listeners (lab/listen.py) start.

Over 400 lines: one function per build step, in the order STEPS runs them,
plus the netlink calls pyroute2 cannot make (port state); reading it top to
bottom is reading a build.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vethtrace import netns
from vethtrace.errors import UserError
from vethtrace.lab import cni, docker, listen, namespaces, overlay
from vethtrace.lab.scenario import (
    BOND_MODES,
    IPVLAN_MODES,
    MACVLAN_MODES,
    PORT_STATES,
    Link,
    Scenario,
)
from vethtrace.lab.state import LabState

T = TypeVar("T")
NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 4  # rtnetlink.h: the gateway is on the link, whatever the subnets
# netlink constants for _set_port_state (linux/rtnetlink.h, if_link.h, netlink.h)
NETLINK_ROUTE, RTM_SETLINK, IFLA_PROTINFO, IFLA_BRPORT_STATE = 0, 19, 12, 1
NLM_F_REQUEST, NLM_F_ACK, NLA_F_NESTED = 1, 4, 1 << 15
CARRIER_WAIT = 3.0  # seconds to wait for a port's carrier before forcing its state


class BuildError(UserError):
    pass


#: A build step: what it does in one namespace (`ns`, the scenario's short name),
#: through a netlink socket of that namespace; `real` maps short names to real ones.
Step = Callable[[IPRoute, Scenario, str, dict[str, str]], None]


def build(scn: Scenario, prefix: str, st: LabState) -> None:
    """Create everything in `scn`; `st` gets each namespace name before it exists."""
    real = {n.name: prefix + n.name for n in scn.netns}
    for ns in scn.netns:
        st.namespaces.append(real[ns.name])
        st.save()
        try:
            namespaces.create(real[ns.name])
        except FileExistsError:
            st.namespaces.pop()
            st.save()
            raise BuildError(f"namespace {real[ns.name]} already exists") from None
    for what, step in STEPS:
        for ns in scn.netns:
            _in(real[ns.name], what, functools.partial(_run_step, step, scn, ns.name, real))
    for _what, lab_step in LAB_STEPS:
        lab_step(scn, real, st)


def _run_step(step: Step, scn: Scenario, ns: str, real: dict[str, str], ipr: IPRoute) -> None:
    step(ipr, scn, ns, real)


def _masters(ipr: IPRoute, scn: Scenario, ns: str, real: dict[str, str]) -> None:
    """Links that stand alone: bridges, bonds, dummies."""
    for link in scn.links_in(ns):
        if link.kind == "bridge":
            opts = {"IFLA_BR_STP_STATE": int(link.stp)}
            if link.vlan_filtering:  # only when asked: some kernels lack the option
                opts["IFLA_BR_VLAN_FILTERING"] = 1
            _add(ipr, link, kind="bridge", **opts)
        elif link.kind == "bond":
            _add(ipr, link, kind="bond", IFLA_BOND_MODE=BOND_MODES[link.mode or "balance-rr"])
        elif link.kind == "dummy":
            _add(ipr, link, kind="dummy")


def _veths(ipr: IPRoute, scn: Scenario, ns: str, real: dict[str, str]) -> None:
    """Veth pairs, from the a side, the peer put straight into b's namespace."""
    for link in _a_sides(scn):
        if link.netns != ns or link.peer is None:
            continue
        peer_ns, peer_name = link.peer
        peer: dict[str, Any] = {"ifname": peer_name}
        if peer_ns != ns:
            peer["net_ns_fd"] = netns.path_of(real[peer_ns])
        _add(ipr, link, kind="veth", peer=peer)


def _stacked(ipr: IPRoute, scn: Scenario, ns: str, real: dict[str, str]) -> None:
    """Links on top of others: macvlan, ipvlan."""
    for link in scn.links_in(ns):
        if link.kind == "macvlan":
            mode = {"IFLA_MACVLAN_MODE": MACVLAN_MODES[link.mode or "bridge"]}
        elif link.kind == "ipvlan":
            mode = {"IFLA_IPVLAN_MODE": IPVLAN_MODES[link.mode or "l2"]}
        else:
            continue
        _add(ipr, link, kind=link.kind, link=_index(ipr, link.lower or ""), **mode)


def _configure(ipr: IPRoute, scn: Scenario, ns: str, real: dict[str, str]) -> None:
    """Per-link settings while everything is down, then sysctls, addresses, nft, iptables."""
    links = scn.links_in(ns)
    for link in links:
        if link.mac:
            _set(ipr, f"setting mac of {link.name}", link.name, address=link.mac)
        if link.master:
            master = _index(ipr, link.master)
            _set(ipr, f"enslaving {link.name} to {link.master}", link.name, master=master)
    for link in links:  # after enslaving: a bridge adopts its ports' MTU
        if link.mtu:
            _set(ipr, f"setting mtu of {link.name}", link.name, mtu=link.mtu)
    _sysctls(scn, ns)
    for link in links:
        for cidr in link.addresses:
            iface = ipaddress.ip_interface(cidr)
            _do(
                f"adding {cidr} to {link.name}",
                ipr.addr,
                "add",
                index=_index(ipr, link.name),
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
            )
    netns_ = next(n for n in scn.netns if n.name == ns)
    if netns_.nft:
        _load("nft", ["-f", "-"], netns_.nft, f"nft ruleset of {ns}", "nftables")
    if netns_.iptables:  # the nft backend: the rules land in nftables, where vethtrace reads them
        what = f"iptables rules of {ns}"
        _load("iptables-nft-restore", [], netns_.iptables, what, "iptables")


def _bring_up(ipr: IPRoute, scn: Scenario, ns: str, real: dict[str, str]) -> None:
    """Up: lo, then masters, then the rest."""
    if next(n.lo for n in scn.netns if n.name == ns):
        _set(ipr, "bringing lo up", "lo", state="up")
    order = sorted(scn.links_in(ns), key=lambda lk: lk.kind not in ("bridge", "bond"))
    for link in order:
        if link.up:
            _set(ipr, f"bringing {link.name} up", link.name, state="up")


def _ports(ipr: IPRoute, scn: Scenario, ns: str, real: dict[str, str]) -> None:
    """Bridge-port options, once carrier is there. Every port whose carrier will
    come is waited for: with STP off the bridge makes it forwarding as carrier
    arrives, so `lab up` returns a lab whose ports already forward (a ping or a
    discovery right after it sees the steady state, not a port still disabled)."""
    bridges = {b.name for b in scn.links_in(ns) if b.kind == "bridge"}
    for link in scn.links_in(ns):
        if link.port is None:
            if link.master in bridges:
                _wait_carrier(ipr, _index(ipr, link.name), link, scn)
            continue
        idx = _index(ipr, link.name)
        if link.port.state is not None:
            _wait_carrier(ipr, idx, link, scn)
            _set_port_state(idx, PORT_STATES[link.port.state], link.name)
        elif link.master in bridges:
            _wait_carrier(ipr, idx, link, scn)
        opts: dict[str, int] = {}
        for key, nla in (
            ("isolated", "IFLA_BRPORT_ISOLATED"),
            ("hairpin", "IFLA_BRPORT_MODE"),
            ("learning", "IFLA_BRPORT_LEARNING"),
            ("flood", "IFLA_BRPORT_UNICAST_FLOOD"),
        ):
            value = getattr(link.port, key)
            if value is not None:
                opts[nla] = int(value)
        if opts:
            what = f"setting bridge-port options of {link.name}"
            _set(ipr, what, link.name, kind="bridge_slave", **opts)


def _routes(ipr: IPRoute, scn: Scenario, ns: str, real: dict[str, str]) -> None:
    """Routes and static neighbours."""
    for r in (r for r in scn.routes if r.netns == ns):
        spec: dict[str, Any] = {}
        if r.dst == "default":
            family = socket.AF_INET6 if r.via and ":" in r.via else socket.AF_INET
            spec["dst"] = "::/0" if family == socket.AF_INET6 else "0.0.0.0/0"
        else:
            net = ipaddress.ip_network(r.dst)
            family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
            spec["dst"] = str(net)
        spec["family"] = family
        if r.via:
            spec["gateway"] = r.via
        if r.dev:
            spec["oif"] = _index(ipr, r.dev)
        if r.metric is not None:
            spec["priority"] = r.metric
        if r.onlink:
            spec["flags"] = RTNH_F_ONLINK
        what = f"adding route {r.dst}" + (f" via {r.via}" if r.via else "")
        _do(what, ipr.route, "add", **spec)
    for n in (n for n in scn.neighs if n.netns == ns):
        _do(
            f"adding neighbour {n.ip} on {n.dev}",
            ipr.neigh,
            "add",
            dst=n.ip,
            lladdr=n.mac,
            ifindex=_index(ipr, n.dev),
            state=NUD_PERMANENT,
        )


#: The steps in order, each over every namespace before the next starts: links
#: exist before masters, MTUs and sysctls naming them; everything is enslaved
#: while still down; port options after carrier is up (see the module docstring).
STEPS: list[tuple[str, Step]] = [
    ("creating bridges, bonds and dummies", _masters),
    ("creating veth pairs", _veths),
    ("creating macvlan/ipvlan links", _stacked),
    ("creating vxlan links", overlay.links),
    ("configuring links", _configure),
    ("bringing links up", _bring_up),
    ("setting bridge-port options", _ports),
    ("adding routes and neighbours", _routes),
    ("adding vxlan fdb entries", overlay.fdb),
]


def _cni(scn: Scenario, real: dict[str, str], st: LabState) -> None:
    """[[cni]] steps, in file order, each run from its node namespace (lab/cni.py)."""
    cni.add_all(scn.cni, real, st)


def _docker(scn: Scenario, real: dict[str, str], st: LabState) -> None:
    """[docker]: the lab's own dockerd, its networks and containers (lab/docker.py)."""
    if scn.docker is not None:
        docker.start(scn.docker, real, st)


def _listeners(scn: Scenario, real: dict[str, str], st: LabState) -> None:
    """[[listen]]: TCP listeners kept running for the lab's lifetime (lab/listen.py)."""
    for lst in scn.listen:
        listen.start(real[lst.netns], lst.port, st)


#: A step over the whole lab, after STEPS: it runs in file order across namespaces
#: and records what it starts in the lab's state `st` (so `down` can undo it).
LabStep = Callable[[Scenario, dict[str, str], LabState], None]

#: Steps after STEPS, in order: plugins need the node's own links; listeners may
#: listen on addresses the plugins gave.
LAB_STEPS: list[tuple[str, LabStep]] = [
    ("running CNI plugins", _cni),
    ("starting Docker and its containers", _docker),
    ("starting TCP listeners", _listeners),
]


def _a_sides(scn: Scenario) -> list[Link]:
    """The first-declared end of each veth pair (the one the pair is created from)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for link in scn.links:
        if link.kind != "veth" or link.peer is None or (link.netns, link.name) in seen:
            continue
        seen |= {(link.netns, link.name), link.peer}
        out.append(link)
    return out


def _in(real_ns: str, step: str, fn: Callable[[IPRoute], T]) -> T:
    def job() -> T:
        if netns.current_inode() == netns.ROOT_INODE:  # never build in the root namespace
            raise RuntimeError(f"refusing to build in the root namespace ({real_ns})")
        with IPRoute() as ipr:
            return fn(ipr)

    try:
        return netns.run_in(real_ns, job)
    except BuildError as exc:
        raise BuildError(f"{real_ns}: {exc}") from None
    except NetlinkError as exc:
        raise BuildError(f"{real_ns}: {step}: {exc.args[-1]}") from None


def _do(what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except NetlinkError as exc:
        raise BuildError(f"{what}: {_msg(exc)}") from None


def _set(ipr: IPRoute, what: str, name: str, **kw: Any) -> None:
    """`ip link set` on the link called `name` in this namespace."""
    _do(what, ipr.link, "set", index=_index(ipr, name), **kw)


def _msg(exc: NetlinkError) -> str:
    return str(exc.args[1]) if len(exc.args) > 1 else os.strerror(exc.code)


def _add(ipr: IPRoute, spec: Link, **kw: Any) -> None:
    try:
        ipr.link("add", ifname=spec.name, **kw)
    except NetlinkError as exc:
        if exc.code == errno.EOPNOTSUPP:
            raise BuildError(
                f"creating {spec.kind} {spec.name}: this kernel does not support "
                f"{spec.kind} links (or an option of them)"
            ) from None
        raise BuildError(f"creating {spec.kind} {spec.name}: {_msg(exc)}") from None


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise BuildError(f"no link {name}")
    return int(found[0])


def _wait_carrier(ipr: IPRoute, idx: int, link: Link, scn: Scenario) -> None:
    """Wait (briefly) until the bridge has seen the port's carrier, when it will."""
    peer = scn.link(*link.peer) if link.peer else None
    if not link.up or (peer is not None and not peer.up):
        return
    deadline = time.monotonic() + CARRIER_WAIT
    while time.monotonic() < deadline:
        msg = ipr.link("get", index=idx)[0]
        if msg.get("IFLA_OPERSTATE") == "UP":
            return
        time.sleep(0.02)


def _set_port_state(index: int, state: int, name: str) -> None:
    """Force a bridge port's STP state, as `bridge link set dev X state N` does.

    pyroute2 cannot send this one: the kernel wants AF_BRIDGE RTM_SETLINK with a
    NESTED IFLA_PROTINFO (un-nested, it reads the nest's header as the state), so
    the few bytes are packed here and sent on a netlink socket made in this thread.
    """
    inner = struct.pack("=HHB3x", 5, IFLA_BRPORT_STATE, state)
    protinfo = struct.pack("=HH", 4 + len(inner), IFLA_PROTINFO | NLA_F_NESTED) + inner
    body = struct.pack("=BxHiII", socket.AF_BRIDGE, 0, index, 0, 0) + protinfo
    header = struct.pack("=IHHII", 16 + len(body), RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.send(header + body)
        reply = sock.recv(4096)
    (err,) = struct.unpack_from("=i", reply, 16)  # struct nlmsgerr after the header
    if err:
        raise BuildError(f"setting port state of {name}: {os.strerror(-err)}")


def _sysctls(scn: Scenario, ns: str) -> None:
    """Write /proc/sys/net/... from this thread (inside the lab namespace)."""
    if netns.current_inode() == netns.ROOT_INODE:
        raise RuntimeError("refusing to write sysctls in the root namespace")
    for key, value in next(n.sysctl for n in scn.netns if n.name == ns).items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(value)
        except FileNotFoundError:
            raise BuildError(f"sysctl {key}: no such setting in this namespace") from None
        except OSError as exc:
            raise BuildError(f"sysctl {key}={value}: {exc.strerror}") from None


def _load(tool: str, args: list[str], text: str, what: str, package: str) -> None:
    """Feed a ruleset to `tool` (nft, iptables-nft-restore) forked from this thread,
    so it lands in this thread's namespace."""
    path = shutil.which(tool) or f"/usr/sbin/{tool}"
    if not os.path.exists(path):
        raise BuildError(f"{tool} not found (install {package}) to load the {what}")
    res = subprocess.run([path, *args], input=text, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        first = (res.stderr.strip().splitlines() or ["failed"])[0]
        raise BuildError(f"{what}: {first}")
