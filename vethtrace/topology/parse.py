"""Netlink dump bytes -> model objects. Pure: no sockets, no privileges.

Each function takes the bytes of one dump (as `capture.dump` returns them and
samples/netlink/ records them) and decodes only the attributes the model
holds, with `struct` (see nlmsg's docstring for why not pyroute2 here).

Over 400 lines: one decoder per netlink message kind (links with their
kind-specific data, addresses, routes, neighbours, FDB, netconf, nftables
chains), sharing the attribute tables at the top.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vethtrace.model import (
    Address,
    BridgePortInfo,
    FdbEntry,
    IfaceKey,
    Interface,
    Neighbour,
    Route,
    VxlanInfo,
)
from vethtrace.topology import nlmsg as nl

_inet_ntop = socket.inet_ntop
_FAMILY = {nl.AF_INET: (socket.AF_INET, 4), nl.AF_INET6: (socket.AF_INET6, 6)}
ARPHRD_ETHER = 1
IFLA_MACVLAN_MODE = 1  # u32 in a macvlan's IFLA_INFO_DATA (if_link.h)
MACVLAN_MODES = {1: "private", 2: "vepa", 4: "bridge", 8: "passthru", 16: "source"}


@dataclass
class Link:
    """An Interface plus the raw cross-namespace references still to resolve."""

    iface: Interface
    link: int | None  # IFLA_LINK: veth peer / lower device ifindex
    link_nsid: int | None  # IFLA_LINK_NETNSID: where `link` lives, as seen from here


def _ip(data: bytes, at: int, family: int) -> str:
    return _inet_ntop(family, nl.payload(data, at))


def links(data: bytes, inode: int) -> list[Link]:
    out: list[Link] = []
    for mtype, _flags, off, end in nl.messages(data):
        if mtype != nl.RTM_NEWLINK:
            continue
        _fam, iftype, index, ifflags, _change = nl.IFINFOMSG.unpack_from(data, off)
        a = nl.attrs(data, off + nl.IFINFOMSG.size, end)
        kind = None
        slave_kind = None
        info: dict[int, int] = {}
        if nl.IFLA_LINKINFO in a:
            info = nl.nested(data, a[nl.IFLA_LINKINFO])
            if nl.IFLA_INFO_KIND in info:
                kind = nl.string(data, info[nl.IFLA_INFO_KIND])
            if nl.IFLA_INFO_SLAVE_KIND in info:
                slave_kind = nl.string(data, info[nl.IFLA_INFO_SLAVE_KIND])
        if kind is None:
            kind = "loopback" if ifflags & nl.IFF_LOOPBACK else "device"
        elif kind == "tun" and iftype == ARPHRD_ETHER:
            kind = "tap"
        oper = nl.u8(data, a[nl.IFLA_OPERSTATE]) if nl.IFLA_OPERSTATE in a else 0
        iface = Interface(
            key=IfaceKey(inode, index),
            name=nl.string(data, a[nl.IFLA_IFNAME]) if nl.IFLA_IFNAME in a else f"if{index}",
            kind=kind,
            admin_up=bool(ifflags & nl.IFF_UP),
            oper_state=nl.OPERSTATES[oper] if oper < len(nl.OPERSTATES) else str(oper),
            carrier=bool(nl.u8(data, a[nl.IFLA_CARRIER])) if nl.IFLA_CARRIER in a else False,
            mtu=nl.u32(data, a[nl.IFLA_MTU]) if nl.IFLA_MTU in a else 0,
            mac=nl.mac(data, a[nl.IFLA_ADDRESS]) if nl.IFLA_ADDRESS in a else None,
            master=nl.u32(data, a[nl.IFLA_MASTER]) if nl.IFLA_MASTER in a else None,
        )
        if kind == "bridge" and nl.IFLA_INFO_DATA in info:
            br = nl.nested(data, info[nl.IFLA_INFO_DATA])
            if nl.IFLA_BR_STP_STATE in br:
                iface.bridge_stp = nl.u32(data, br[nl.IFLA_BR_STP_STATE]) != 0
            if nl.IFLA_BR_VLAN_FILTERING in br:
                iface.vlan_filtering = nl.u8(data, br[nl.IFLA_BR_VLAN_FILTERING]) != 0
        if kind in ("macvlan", "macvtap") and nl.IFLA_INFO_DATA in info:
            mv = nl.nested(data, info[nl.IFLA_INFO_DATA])
            if IFLA_MACVLAN_MODE in mv:
                mode = nl.u32(data, mv[IFLA_MACVLAN_MODE])
                iface.macvlan_mode = MACVLAN_MODES.get(mode, str(mode))
        if kind == "vxlan" and nl.IFLA_INFO_DATA in info:
            iface.vxlan = _vxlan(data, nl.nested(data, info[nl.IFLA_INFO_DATA]))
        if slave_kind == "bridge" and nl.IFLA_INFO_SLAVE_DATA in info:
            iface.bridge_port = _bridge_port(data, nl.nested(data, info[nl.IFLA_INFO_SLAVE_DATA]))
        if nl.IFLA_AF_SPEC in a:
            iface.sysctls = _inet_conf(data, nl.nested(data, a[nl.IFLA_AF_SPEC]))
        link = nl.u32(data, a[nl.IFLA_LINK]) if nl.IFLA_LINK in a else None
        nsid = nl.s32(data, a[nl.IFLA_LINK_NETNSID]) if nl.IFLA_LINK_NETNSID in a else None
        out.append(Link(iface, link, nsid))
    return out


def _vxlan(data: bytes, v: dict[int, int]) -> VxlanInfo:
    def addr(attr: int) -> str | None:
        return _ip(data, v[attr], socket.AF_INET) if attr in v else None

    return VxlanInfo(
        vni=nl.u32(data, v[nl.IFLA_VXLAN_ID]) if nl.IFLA_VXLAN_ID in v else 0,
        port=nl.be16(data, v[nl.IFLA_VXLAN_PORT]) if nl.IFLA_VXLAN_PORT in v else 4789,
        local=addr(nl.IFLA_VXLAN_LOCAL),
        group=addr(nl.IFLA_VXLAN_GROUP),
        link=nl.u32(data, v[nl.IFLA_VXLAN_LINK]) if nl.IFLA_VXLAN_LINK in v else None,
        learning=bool(nl.u8(data, v[nl.IFLA_VXLAN_LEARNING]))
        if nl.IFLA_VXLAN_LEARNING in v
        else True,
    )


def _bridge_port(data: bytes, p: dict[int, int]) -> BridgePortInfo:
    state = nl.u8(data, p[nl.IFLA_BRPORT_STATE]) if nl.IFLA_BRPORT_STATE in p else 3

    def flag(attr: int, default: bool) -> bool:
        return bool(nl.u8(data, p[attr])) if attr in p else default

    return BridgePortInfo(
        state=nl.BR_PORT_STATES[state] if state < len(nl.BR_PORT_STATES) else str(state),
        isolated=flag(nl.IFLA_BRPORT_ISOLATED, False),
        hairpin=flag(nl.IFLA_BRPORT_MODE, False),
        learning=flag(nl.IFLA_BRPORT_LEARNING, True),
        flood=flag(nl.IFLA_BRPORT_UNICAST_FLOOD, True),
        mcast_flood=flag(nl.IFLA_BRPORT_MCAST_FLOOD, True),
        bcast_flood=flag(nl.IFLA_BRPORT_BCAST_FLOOD, True),
        neigh_suppress=flag(nl.IFLA_BRPORT_NEIGH_SUPPRESS, False),
    )


_INET_CONF: dict[bytes, dict[str, str]] = {}


def _inet_conf(data: bytes, spec: dict[int, int]) -> dict[str, str]:
    if nl.AF_INET not in spec:
        return {}
    inet = nl.nested(data, spec[nl.AF_INET])
    if nl.IFLA_INET_CONF not in inet:
        return {}
    # Most interfaces carry the very same settings: decode each distinct array once.
    raw = nl.payload(data, inet[nl.IFLA_INET_CONF])
    conf = _INET_CONF.get(raw)
    if conf is None:
        values = struct.unpack_from(f"={len(raw) // 4}I", raw)
        conf = {name: str(values[i - 1]) for name, i in nl.INET_DEVCONF.items() if i <= len(values)}
        if len(_INET_CONF) < 1024:
            _INET_CONF[raw] = conf
    return dict(conf)


def addresses(data: bytes) -> dict[int, list[Address]]:
    """ifindex -> addresses, in the kernel's order."""
    out: dict[int, list[Address]] = {}
    for mtype, _flags, off, end in nl.messages(data):
        if mtype != nl.RTM_NEWADDR:
            continue
        family, prefixlen, _fl, scope, index = nl.IFADDRMSG.unpack_from(data, off)
        if family not in _FAMILY:
            continue
        sfam, ver = _FAMILY[family]
        a = nl.attrs(data, off + nl.IFADDRMSG.size, end)
        at = a.get(nl.IFA_LOCAL) or a.get(nl.IFA_ADDRESS)
        if at is None:
            continue
        out.setdefault(index, []).append(
            Address(_ip(data, at, sfam), prefixlen, ver, nl.SCOPES.get(scope, str(scope)))
        )
    return out


def routes(data: bytes, keep: Callable[[int], bool] | None = None) -> list[Route]:
    """Routes of the main table, or of the tables `keep(table)` accepts (the dump
    holds every table: path prediction reads the others, see pathfacts)."""
    out: list[Route] = []
    for mtype, _flags, off, end in nl.messages(data):
        if mtype != nl.RTM_NEWROUTE:
            continue
        family, dst_len, _sl, _tos, table, _proto, scope, rtype, _f = nl.RTMSG.unpack_from(
            data, off
        )
        if family not in _FAMILY:
            continue
        sfam, ver = _FAMILY[family]
        a = nl.attrs(data, off + nl.RTMSG.size, end)
        if nl.RTA_TABLE in a:
            table = nl.u32(data, a[nl.RTA_TABLE])
        if (table != nl.RT_TABLE_MAIN) if keep is None else not keep(table):
            continue
        if nl.RTA_DST in a:
            dst = f"{_ip(data, a[nl.RTA_DST], sfam)}/{dst_len}"
        else:
            dst = "default" if dst_len == 0 else ("0.0.0.0" if ver == 4 else "::") + f"/{dst_len}"
        oif = nl.u32(data, a[nl.RTA_OIF]) if nl.RTA_OIF in a else None
        gateway = _ip(data, a[nl.RTA_GATEWAY], sfam) if nl.RTA_GATEWAY in a else None
        if gateway is None and nl.RTA_VIA in a:
            s = a[nl.RTA_VIA]
            via_fam = nl.u16(data, s)
            if via_fam in _FAMILY:
                gateway = _inet_ntop(_FAMILY[via_fam][0], data[s + 2 : nl.end_of(data, s)])
        if nl.RTA_MULTIPATH in a and oif is None:
            oif, gateway = _first_nexthop(data, a[nl.RTA_MULTIPATH], sfam)
        out.append(
            Route(
                dst=dst,
                oif=oif,
                gateway=gateway,
                prefsrc=_ip(data, a[nl.RTA_PREFSRC], sfam) if nl.RTA_PREFSRC in a else None,
                family=ver,
                scope=nl.ROUTE_SCOPES.get(scope, str(scope)),
                table=table,
                kind=nl.ROUTE_TYPES.get(rtype, str(rtype)),
                metric=nl.u32(data, a[nl.RTA_PRIORITY]) if nl.RTA_PRIORITY in a else 0,
            )
        )
    return out


def _first_nexthop(data: bytes, start: int, sfam: int) -> tuple[int | None, str | None]:
    if start + nl.RTNH.size > nl.end_of(data, start):
        return None, None
    length, _flags, _hops, ifindex = nl.RTNH.unpack_from(data, start)
    a = nl.attrs(data, start + nl.RTNH.size, start + length)
    gw = _ip(data, a[nl.RTA_GATEWAY], sfam) if nl.RTA_GATEWAY in a else None
    return ifindex, gw


def neighbours(data: bytes) -> list[Neighbour]:
    out: list[Neighbour] = []
    for mtype, _flags, off, end in nl.messages(data):
        if mtype != nl.RTM_NEWNEIGH:
            continue
        family, ifindex, state, flags, _t = nl.NDMSG.unpack_from(data, off)
        if family not in _FAMILY or flags & nl.NTF_PROXY:
            continue
        sfam, ver = _FAMILY[family]
        a = nl.attrs(data, off + nl.NDMSG.size, end)
        if nl.NDA_DST not in a:
            continue
        lladdr = nl.mac(data, a[nl.NDA_LLADDR]) if nl.NDA_LLADDR in a else None
        out.append(
            Neighbour(ifindex, _ip(data, a[nl.NDA_DST], sfam), lladdr, nl.nud_state(state), ver)
        )
    return out


_NTF_FLAGS = [
    (nl.NTF_SELF, "self"),
    (nl.NTF_MASTER, "master"),
    (nl.NTF_EXT_LEARNED, "extern_learn"),
    (nl.NTF_OFFLOADED, "offload"),
    (nl.NTF_STICKY, "sticky"),
    (nl.NTF_ROUTER, "router"),
]


_FDB_FLAGS: dict[tuple[int, int], list[str]] = {}


def _fdb_flags(state: int, flags: int) -> list[str]:
    """'permanent'/'static' (none: learned) then ndm flags, as `bridge fdb` names them."""
    if (state, flags) not in _FDB_FLAGS:
        names = [name for bit, name in _NTF_FLAGS if flags & bit]
        if state & nl.NUD_PERMANENT:
            names.insert(0, "permanent")
        elif state & nl.NUD_NOARP:
            names.insert(0, "static")
        _FDB_FLAGS[(state, flags)] = names
    return list(_FDB_FLAGS[(state, flags)])


def fdb(data: bytes) -> list[FdbEntry]:
    out: list[FdbEntry] = []
    for mtype, _flags, off, end in nl.messages(data):
        if mtype != nl.RTM_NEWNEIGH:
            continue
        family, ifindex, state, flags, _t = nl.NDMSG.unpack_from(data, off)
        if family != nl.AF_BRIDGE:
            continue
        a = nl.attrs(data, off + nl.NDMSG.size, end)
        if nl.NDA_LLADDR not in a:
            continue
        names = _fdb_flags(state, flags)
        out.append(
            FdbEntry(
                ifindex=ifindex,
                mac=nl.mac(data, a[nl.NDA_LLADDR]),
                master=nl.u32(data, a[nl.NDA_MASTER]) if nl.NDA_MASTER in a else None,
                vlan=nl.u16(data, a[nl.NDA_VLAN]) if nl.NDA_VLAN in a else None,
                flags=names,
                dst=_fdb_dst(data, a),
                vni=nl.u32(data, a[nl.NDA_VNI]) if nl.NDA_VNI in a else None,
            )
        )
    return out


def _fdb_dst(data: bytes, a: dict[int, int]) -> str | None:
    """A vxlan entry's remote VTEP (NDA_DST: 4 or 16 bytes)."""
    if nl.NDA_DST not in a:
        return None
    raw = nl.payload(data, a[nl.NDA_DST])
    return _inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def nsid_list(data: bytes) -> set[int]:
    """nsids assigned in a namespace (from an RTM_GETNSID dump)."""
    out: set[int] = set()
    for mtype, _flags, off, end in nl.messages(data):
        if mtype == nl.RTM_NEWNSID:
            a = nl.attrs(data, off + nl.RTGENMSG.size, end)
            if nl.NETNSA_NSID in a:
                out.add(nl.s32(data, a[nl.NETNSA_NSID]))
    return out


def netconf(data: bytes) -> dict[str, str]:
    """Namespace-wide values from RTM_NEWNETCONF answers, under their sysctl names."""
    out: dict[str, str] = {}
    for mtype, _flags, off, end in nl.messages(data):
        if mtype != nl.RTM_NEWNETCONF:
            continue
        family = data[off]
        a = nl.attrs(data, off + nl.RTGENMSG.size, end)
        if nl.NETCONFA_IFINDEX in a and nl.s32(data, a[nl.NETCONFA_IFINDEX]) != -1:
            continue
        if family == nl.AF_INET:
            if nl.NETCONFA_FORWARDING in a:
                out["net.ipv4.ip_forward"] = str(nl.s32(data, a[nl.NETCONFA_FORWARDING]))
            if nl.NETCONFA_RP_FILTER in a:
                out["net.ipv4.conf.all.rp_filter"] = str(nl.s32(data, a[nl.NETCONFA_RP_FILTER]))
            if nl.NETCONFA_PROXY_NEIGH in a:
                out["net.ipv4.conf.all.proxy_arp"] = str(nl.s32(data, a[nl.NETCONFA_PROXY_NEIGH]))
        elif family == nl.AF_INET6 and nl.NETCONFA_FORWARDING in a:
            out["net.ipv6.conf.all.forwarding"] = str(nl.s32(data, a[nl.NETCONFA_FORWARDING]))
    return out


# --- nftables (nfnetlink) -----------------------------------------------------

NFT_FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
_HOOKS_INET = ["prerouting", "input", "forward", "output", "postrouting", "ingress"]
_HOOKS = {"arp": ["input", "output", "forward"], "netdev": ["ingress", "egress"]}
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY = 1, 3, 4, 5
NFTA_CHAIN_TYPE = 7
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS = 1, 2, 4
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_IMMEDIATE_DATA = 2
NFTA_DATA_VERDICT = 2
NFTA_VERDICT_CODE = 1
NF_DROP, NF_ACCEPT = 0, 1


def firewall(chains: bytes | None, rules: bytes | None, legacy: list[str]) -> dict[str, Any]:
    """Forward-path facts about netfilter in one namespace.

    `chains` lists nftables base chains (those attached to a hook; iptables-nft
    rules live there too) with their policy, how many rules they hold and how
    many of those end in drop/reject. The `*_drop` booleans say whether any
    chain at that hook can drop (policy drop or a drop rule); rules reached by
    jump/goto are not followed, but `regular_chains` (when there are any) names
    those chains ("ip filter DOCKER-USER": whose firewall this is).
    `iptables_legacy` names x_tables tables loaded in the namespace (their rules
    are not read).
    """
    fw: dict[str, Any] = {"nftables": chains is not None, "chains": []}
    if chains is not None:
        counts: dict[tuple[int, str, str], list[int]] = {}
        rdata = rules or b""
        for mtype, _flags, off, end in nl.messages(rdata):
            if mtype & 0xFF != 6:  # NFT_MSG_NEWRULE
                continue
            a = nl.attrs(rdata, off + nl.NFGENMSG.size, end)
            if NFTA_RULE_TABLE not in a or NFTA_RULE_CHAIN not in a:
                continue
            table = nl.string(rdata, a[NFTA_RULE_TABLE])
            c = counts.setdefault((rdata[off], table, nl.string(rdata, a[NFTA_RULE_CHAIN])), [0, 0])
            c[0] += 1
            if NFTA_RULE_EXPRESSIONS in a and _drops(rdata, a[NFTA_RULE_EXPRESSIONS]):
                c[1] += 1
        for mtype, _flags, off, end in nl.messages(chains):
            if mtype & 0xFF != 3:  # NFT_MSG_NEWCHAIN
                continue
            family = chains[off]
            a = nl.attrs(chains, off + nl.NFGENMSG.size, end)
            fam = NFT_FAMILIES.get(family, str(family))
            if NFTA_CHAIN_HOOK not in a:  # a regular chain: only reached by jumps
                if NFTA_CHAIN_TABLE in a and NFTA_CHAIN_NAME in a:
                    table = nl.string(chains, a[NFTA_CHAIN_TABLE])
                    name = nl.string(chains, a[NFTA_CHAIN_NAME])
                    fw.setdefault("regular_chains", []).append(f"{fam} {table} {name}")
                continue
            hook = nl.nested(chains, a[NFTA_CHAIN_HOOK])
            hooknum = nl.be32(chains, hook[NFTA_HOOK_HOOKNUM]) if NFTA_HOOK_HOOKNUM in hook else -1
            names = _HOOKS.get(fam, _HOOKS_INET)
            table = nl.string(chains, a[NFTA_CHAIN_TABLE])
            name = nl.string(chains, a[NFTA_CHAIN_NAME])
            policy = nl.be32(chains, a[NFTA_CHAIN_POLICY]) if NFTA_CHAIN_POLICY in a else NF_ACCEPT
            n_rules, n_drop = counts.get((family, table, name), [0, 0])
            fw["chains"].append(
                {
                    "family": fam,
                    "table": table,
                    "chain": name,
                    "type": nl.string(chains, a[NFTA_CHAIN_TYPE]) if NFTA_CHAIN_TYPE in a else "",
                    "hook": names[hooknum] if 0 <= hooknum < len(names) else str(hooknum),
                    "priority": nl.be32(chains, hook[NFTA_HOOK_PRIORITY])
                    if NFTA_HOOK_PRIORITY in hook
                    else 0,
                    "policy": "drop" if policy == NF_DROP else "accept",
                    "rules": n_rules,
                    "drop_rules": n_drop,
                }
            )

    def can_drop(families: tuple[str, ...], hook: str) -> bool:
        return any(
            c["family"] in families
            and c["hook"] == hook
            and (c["policy"] == "drop" or c["drop_rules"])
            for c in fw["chains"]
        )

    fw["forward_drop"] = can_drop(("ip", "ip6", "inet"), "forward")
    fw["input_drop"] = can_drop(("ip", "ip6", "inet"), "input")
    fw["bridge_forward_drop"] = can_drop(("bridge",), "forward")
    fw["iptables_legacy"] = list(legacy)
    return fw


def _drops(data: bytes, at: int) -> bool:
    for _t, s in nl.attr_list(data, at, nl.end_of(data, at)):
        expr = nl.nested(data, s)
        if NFTA_EXPR_NAME not in expr:
            continue
        name = nl.string(data, expr[NFTA_EXPR_NAME])
        if name == "reject":
            return True
        if name == "immediate" and NFTA_EXPR_DATA in expr:
            imm = nl.nested(data, expr[NFTA_EXPR_DATA])
            if NFTA_IMMEDIATE_DATA not in imm:
                continue
            d = nl.nested(data, imm[NFTA_IMMEDIATE_DATA])
            if NFTA_DATA_VERDICT not in d:
                continue
            v = nl.nested(data, d[NFTA_DATA_VERDICT])
            if NFTA_VERDICT_CODE in v and nl.be32(data, v[NFTA_VERDICT_CODE]) == NF_DROP:
                return True
    return False
