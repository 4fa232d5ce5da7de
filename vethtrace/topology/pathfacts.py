"""What path prediction needs beyond the topology: policy rules, every route
table, proxy neighbour entries, listening sockets and the nftables ruleset.

Three parts, like the rest of discovery: `dump_here` runs inside capture's
per-namespace job (netlink bytes into RawNamespace, no decoding), `decode_into`
turns those bytes into the model (pure: recorded captures replay), and
`attach_rulesets` asks libnftables for the ruleset as nftables' own JSON in
each namespace that has nft chains at all (nft's JSON is the one description
of a ruleset nftables itself guarantees; decoding rule bytecode ourselves would
be a second, weaker parser). Namespaces without chains never pay for it.
Where iptables-nft rules hold xt matches, whose arguments nft's JSON leaves
out, iptables-nft-save supplies them (xtsave.py).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
from typing import TYPE_CHECKING

from vethtrace.model import Neighbour, Route, Rule, Socket
from vethtrace.topology import nlmsg as nl
from vethtrace.topology import xtsave

if TYPE_CHECKING:
    from vethtrace.model import Namespace, Topology
    from vethtrace.topology.capture import RawNamespace
    from vethtrace.topology.namespaces import NsRef

RTM_NEWRULE, RTM_GETRULE = 32, 34
FIB_RULE_HDR = nl.RTMSG  # family, dst_len, src_len, tos, table, res1, res2, action, flags
FRA_DST, FRA_SRC, FRA_IIFNAME, FRA_GOTO, FRA_PRIORITY = 1, 2, 3, 4, 6
FRA_FWMARK, FRA_SUPPRESS_PREFIXLEN, FRA_TABLE, FRA_FWMASK, FRA_OIFNAME = 10, 14, 15, 16, 17
FRA_L3MDEV, FRA_UID_RANGE, FRA_IP_PROTO, FRA_SPORT_RANGE, FRA_DPORT_RANGE = 19, 20, 22, 23, 24
FIB_RULE_INVERT = 0x2
RULE_ACTIONS = {1: "table", 2: "goto", 3: "nop", 6: "blackhole", 7: "unreachable", 8: "prohibit"}

RULE_REQ = nl.request(RTM_GETRULE, FIB_RULE_HDR.pack(nl.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0))
# The proxy table is dumped only when the request carries NTF_PROXY.
PROXY_REQ = nl.request(nl.RTM_GETNEIGH, nl.NDMSG.pack(nl.AF_UNSPEC, 0, 0, nl.NTF_PROXY, 0))

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
INET_DIAG_REQ = struct.Struct("=BBBxI48x")  # family, protocol, ext, states, (zero) sockid
INET_DIAG_MSG = struct.Struct("=BBBBHH16s16sI8xIIIII")
INET_DIAG_SKV6ONLY = 11
TCP_LISTEN = 10
IPPROTO_TCP, IPPROTO_UDP = 6, 17
SOCK_REQS = [
    # the protocol as sequence number: answers say which request they belong to
    nl.request(SOCK_DIAG_BY_FAMILY, INET_DIAG_REQ.pack(fam, proto, 0, states), seq=proto)
    for fam in (nl.AF_INET, nl.AF_INET6)
    for proto, states in ((IPPROTO_TCP, 1 << TCP_LISTEN), (IPPROTO_UDP, 0xFFFFFFFF))
]


def dump_here(sock: socket.socket, raw: RawNamespace, sockets: bool = False) -> None:
    """Rules, proxy entries and (with `sockets`) listening sockets of the calling
    thread's namespace (called by capture.dump_here with that namespace's
    NETLINK_ROUTE socket). Sockets only decide a tcp/udp path's delivery (`path
    --proto tcp|udp` asks for them, and capture asks where a VXLAN device listens);
    elsewhere the sock_diag dumps are skipped (~25 ms at 500 namespaces)."""
    from vethtrace.topology.capture import dump

    for attr, req in (("rules", RULE_REQ), ("proxies", PROXY_REQ)):
        try:
            setattr(raw, attr, dump(sock, req))
        except OSError:
            setattr(raw, attr, b"")
    if not sockets:
        return
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as diag:
            out = b""
            for req in SOCK_REQS:
                try:
                    out += dump(diag, req)
                except OSError:  # e.g. no IPv6, no udp_diag module
                    continue
            raw.sockets = out
    except OSError:
        raw.sockets = b""


_FAMILY = {nl.AF_INET: (socket.AF_INET, 4), nl.AF_INET6: (socket.AF_INET6, 6)}


def rules(data: bytes) -> list[Rule]:
    out: list[Rule] = []
    for mtype, _flags, off, end in nl.messages(data):
        if mtype != RTM_NEWRULE:
            continue
        family, dst_len, src_len, _tos, table, _r1, _r2, action, flags = FIB_RULE_HDR.unpack_from(
            data, off
        )
        if family not in _FAMILY:
            continue
        sfam, ver = _FAMILY[family]
        a = nl.attrs(data, off + FIB_RULE_HDR.size, end)
        out.append(
            Rule(
                priority=nl.u32(data, a[FRA_PRIORITY]) if FRA_PRIORITY in a else 0,
                family=ver,
                action=RULE_ACTIONS.get(action, str(action)),
                table=nl.u32(data, a[FRA_TABLE]) if FRA_TABLE in a else table,
                src=_prefix(data, a, FRA_SRC, sfam, src_len),
                dst=_prefix(data, a, FRA_DST, sfam, dst_len),
                iif=nl.string(data, a[FRA_IIFNAME]) if FRA_IIFNAME in a else None,
                oif=nl.string(data, a[FRA_OIFNAME]) if FRA_OIFNAME in a else None,
                fwmark=nl.u32(data, a[FRA_FWMARK]) if FRA_FWMARK in a else None,
                fwmask=nl.u32(data, a[FRA_FWMASK]) if FRA_FWMASK in a else None,
                invert=bool(flags & FIB_RULE_INVERT),
                ip_proto=data[a[FRA_IP_PROTO]] if FRA_IP_PROTO in a else None,
                sport=_range(data, a, FRA_SPORT_RANGE),
                dport=_range(data, a, FRA_DPORT_RANGE),
                goto=nl.u32(data, a[FRA_GOTO]) if FRA_GOTO in a else None,
                suppress_prefixlen=_suppress(data, a),
                l3mdev=bool(data[a[FRA_L3MDEV]]) if FRA_L3MDEV in a else False,
                uid_range=list(struct.unpack_from("=II", data, a[FRA_UID_RANGE]))
                if FRA_UID_RANGE in a
                else None,
            )
        )
    return out


def _prefix(data: bytes, a: dict[int, int], attr: int, sfam: int, plen: int) -> str | None:
    if attr not in a:
        return None
    return f"{socket.inet_ntop(sfam, nl.payload(data, a[attr]))}/{plen}"


def _range(data: bytes, a: dict[int, int], attr: int) -> list[int] | None:
    if attr not in a:
        return None
    return list(struct.unpack_from("=HH", data, a[attr]))


def _suppress(data: bytes, a: dict[int, int]) -> int | None:
    if FRA_SUPPRESS_PREFIXLEN not in a:
        return None
    value = nl.s32(data, a[FRA_SUPPRESS_PREFIXLEN])
    return None if value < 0 else value  # -1: not set


def other_routes(data: bytes) -> list[Route]:
    """Routes of every table but main (parse.routes has main)."""
    from vethtrace.topology.parse import routes

    return routes(data, keep=lambda table: table != nl.RT_TABLE_MAIN)


def proxies(data: bytes) -> list[Neighbour]:
    out: list[Neighbour] = []
    for mtype, _flags, off, end in nl.messages(data):
        if mtype != nl.RTM_NEWNEIGH:
            continue
        family, ifindex, _state, flags, _t = nl.NDMSG.unpack_from(data, off)
        if family not in _FAMILY or not flags & nl.NTF_PROXY:
            continue
        sfam, ver = _FAMILY[family]
        a = nl.attrs(data, off + nl.NDMSG.size, end)
        if nl.NDA_DST in a:
            addr = socket.inet_ntop(sfam, nl.payload(data, a[nl.NDA_DST]))
            out.append(Neighbour(ifindex, addr, None, "PROXY", ver))
    return out


def sockets(data: bytes) -> list[Socket]:
    out: list[Socket] = []
    for mtype, _flags, off, end in nl.messages(data):
        if mtype != SOCK_DIAG_BY_FAMILY:
            continue
        family, _state, _timer, _retrans, sport, _dport, src, _dst, ifindex, *_rest = (
            INET_DIAG_MSG.unpack_from(data, off)
        )
        if family not in _FAMILY:
            continue
        sfam, ver = _FAMILY[family]
        a = nl.attrs(data, off + INET_DIAG_MSG.size, end)
        proto = _proto_name(nl.NLMSG_HDR.unpack_from(data, off - nl.NLMSG_HDR.size)[3])
        addr = socket.inet_ntop(sfam, src[:4] if ver == 4 else src)
        v6only = bool(data[a[INET_DIAG_SKV6ONLY]]) if INET_DIAG_SKV6ONLY in a else False
        out.append(Socket(proto, ver, addr, socket.ntohs(sport), ifindex, v6only))
    return out


def _proto_name(num: int) -> str:
    return {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}.get(num, str(num))


def decode_into(ns: Namespace, raw: RawNamespace) -> None:
    """Fill the path facts of a fully read namespace from its raw dumps."""
    ns.rules = rules(raw.rules)
    ns.other_routes = other_routes(raw.routes)
    ns.proxy_neighbours = proxies(raw.proxies)
    ns.sockets = sockets(raw.sockets)


# --- the nftables ruleset, as nftables' JSON ------------------------------------


def ruleset_json(fd: int) -> tuple[list[dict[str, object]] | None, str | None]:
    """`nft -j list ruleset` of the namespace behind fd, through libnftables in a
    thread of our own that enters it first (libnftables opens its netlink
    socket when it runs a command, in the calling thread's namespace)."""
    from vethtrace import netns

    def inside() -> tuple[list[dict[str, object]] | None, str | None]:
        try:
            import nftables
        except ImportError:
            return None, "python3-nftables is not installed (run ./run setup)"
        netns._setns(fd)
        nft = nftables.Nftables()
        nft.set_json_output(True)
        nft.set_handle_output(True)
        rc, out, err = nft.cmd("list ruleset")
        if rc != 0:
            return None, (err.strip().splitlines() or [f"nft exit status {rc}"])[0]
        try:
            items = list(json.loads(out).get("nftables", []))
        except ValueError as exc:
            return None, f"nft printed JSON it cannot parse back: {exc}"
        for family in xtsave.families_with_xt(items):
            save = _run_save(xtsave.SAVE_TOOLS[family])
            if save:
                xtsave.annotate(items, family, save)
        return items, None

    return netns.in_thread(inside, "vethtrace-nft")


def _run_save(tool: str) -> str | None:
    """iptables-nft-save's text in the calling thread's namespace (the child
    inherits it), or None: then the xt matches stay unknown."""
    try:
        proc = subprocess.run([tool], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def attach_rulesets(topo: Topology, refs: list[NsRef]) -> None:
    """Set Namespace.nft (or nft_error) where discovery found nft chains."""
    paths = {ref.inode: ref.path for ref in refs}
    for ns in topo.namespaces:
        if ns.partial or not ns.firewall.get("chains") or ns.inode not in paths:
            continue
        try:
            fd = os.open(paths[ns.inode], os.O_RDONLY)
        except OSError as exc:
            ns.nft_error = f"cannot open the namespace: {exc.strerror}"
            continue
        try:
            ns.nft, ns.nft_error = ruleset_json(fd)
        except OSError as exc:
            ns.nft_error = f"cannot enter the namespace: {exc.strerror}"
        finally:
            os.close(fd)
