"""The netlink wire format, just as much of it as discovery reads.

We talk to the kernel with plain sockets and decode with `struct` because
discovery has to visit hundreds of namespaces in well under a second:
pyroute2's generic message classes cost more per message than the kernel
takes to produce it (measured in bench/README.md, "## topo"). Everything here
is pure (bytes in, tuples/dicts out), so recorded dumps decode without root.
Constants are the kernel's uapi numbers (linux/rtnetlink.h, if_link.h,
neighbour.h, net_namespace.h, netfilter/nf_tables.h).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

# netlink header
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300

NLA_HDR = struct.Struct("=HH")
NLA_TYPE_MASK = 0x3FFF

# rtnetlink message types
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTM_NEWNEIGH, RTM_GETNEIGH = 28, 30
RTM_NEWNSID, RTM_GETNSID = 88, 90
RTM_NEWNETCONF, RTM_GETNETCONF = 80, 82

AF_UNSPEC, AF_INET, AF_BRIDGE, AF_INET6 = 0, 2, 7, 10

# fixed headers after nlmsghdr
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBi")  # family, prefixlen, flags, scope, index
# family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTMSG = struct.Struct("=BBBBBBBBI")
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
RTGENMSG = struct.Struct("=Bxxx")
NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big endian, unused)

# link attributes (IFLA_*)
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_MASTER = 10
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_AF_SPEC = 26
IFLA_LINK_NETNSID = 37
IFLA_CARRIER = 33
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_INFO_SLAVE_KIND = 4
IFLA_INFO_SLAVE_DATA = 5
IFLA_INET_CONF = 1
IFLA_BR_STP_STATE = 5
IFLA_BR_VLAN_FILTERING = 7
IFLA_VXLAN_ID, IFLA_VXLAN_GROUP, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL = 1, 2, 3, 4
IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT = 7, 15  # PORT: big-endian u16
IFLA_BRPORT_STATE = 1
IFLA_BRPORT_MODE = 4  # hairpin
IFLA_BRPORT_LEARNING = 8
IFLA_BRPORT_UNICAST_FLOOD = 9
IFLA_BRPORT_MCAST_FLOOD = 27
IFLA_BRPORT_BCAST_FLOOD = 30
IFLA_BRPORT_NEIGH_SUPPRESS = 32
IFLA_BRPORT_ISOLATED = 33

IFF_UP = 0x1
IFF_LOOPBACK = 0x8

OPERSTATES = ["UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP"]
BR_PORT_STATES = ["disabled", "listening", "learning", "forwarding", "blocking"]

# Per-device IPv4 settings inside IFLA_AF_SPEC/AF_INET/IFLA_INET_CONF: an array
# of u32 where entry id-1 holds IPV4_DEVCONF id (linux/ip.h).
INET_DEVCONF = {
    "forwarding": 1,
    "proxy_arp": 3,
    "rp_filter": 8,
    "arp_filter": 13,
    "arp_announce": 18,
    "arp_ignore": 19,
    "arp_accept": 21,
    "send_redirects": 6,
    "accept_local": 23,
    "route_localnet": 26,
}

# address attributes
IFA_ADDRESS = 1
IFA_LOCAL = 2
# route attributes
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_PREFSRC = 7
RTA_MULTIPATH = 9
RTA_TABLE = 15
RTA_VIA = 18
RT_TABLE_MAIN = 254
RTNH = struct.Struct("=HBBi")  # len, flags, hops, ifindex
ROUTE_TYPES = {
    1: "unicast",
    2: "local",
    3: "broadcast",
    4: "anycast",
    5: "multicast",
    6: "blackhole",
    7: "unreachable",
    8: "prohibit",
    9: "throw",
    10: "nat",
}
# neighbour attributes
NDA_DST = 1
NDA_LLADDR = 2
NDA_VLAN = 5
NDA_PORT = 6  # vxlan fdb: big-endian u16
NDA_VNI = 7  # vxlan fdb: u32
NDA_MASTER = 9
NUD_STATES = [
    (0x01, "INCOMPLETE"),
    (0x02, "REACHABLE"),
    (0x04, "STALE"),
    (0x08, "DELAY"),
    (0x10, "PROBE"),
    (0x20, "FAILED"),
    (0x40, "NOARP"),
    (0x80, "PERMANENT"),
]
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_USE, NTF_SELF, NTF_MASTER, NTF_PROXY, NTF_EXT_LEARNED = 0x1, 0x2, 0x4, 0x8, 0x10
NTF_OFFLOADED, NTF_STICKY, NTF_ROUTER = 0x20, 0x40, 0x80
# netconf (namespace-wide forwarding / rp_filter without touching /proc/sys)
NETCONFA_IFINDEX = 1
NETCONFA_FORWARDING = 2
NETCONFA_RP_FILTER = 3
NETCONFA_PROXY_NEIGH = 5
NETCONFA_IFINDEX_ALL = -1
# netns ids
NETNSA_NSID = 1
NETNSA_FD = 3

SCOPES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
ROUTE_SCOPES = {0: "universe", 200: "site", 253: "link", 254: "host", 255: "nowhere"}


def request(
    msg_type: int, body: bytes, flags: int = NLM_F_REQUEST | NLM_F_DUMP, seq: int = 1
) -> bytes:
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), msg_type, flags, seq, 0) + body


def nla(attr_type: int, payload: bytes) -> bytes:
    n = NLA_HDR.size + len(payload)
    return NLA_HDR.pack(n, attr_type) + payload + b"\0" * ((4 - n % 4) % 4)


def messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, flags, payload offset, message end) for each message in a dump's bytes."""
    off, end = 0, len(data)
    unpack = NLMSG_HDR.unpack_from
    while off + 16 <= end:
        length, mtype, flags, _seq, _pid = unpack(data, off)
        if length < 16:
            break
        yield mtype, flags, off + 16, off + length
        off += (length + 3) & ~3


def attrs(data: bytes, off: int, end: int) -> dict[int, int]:
    """Attribute type -> payload offset, for one attribute level. Offsets only
    (no (start, end) tuples): this loop runs ~100 000 times at 500 namespaces;
    where a payload's end matters, `end_of` reads it from the header."""
    out: dict[int, int] = {}
    unpack = NLA_HDR.unpack_from
    while off + 4 <= end:
        length, atype = unpack(data, off)
        if length < 4:
            break
        out[atype & NLA_TYPE_MASK] = off + 4
        off += (length + 3) & ~3
    return out


def end_of(data: bytes, at: int) -> int:
    """End of the payload that starts at `at` (its attribute header precedes it)."""
    return at - 4 + _U16(data, at - 4)[0]


def nested(data: bytes, at: int) -> dict[int, int]:
    """attrs() of the attribute list that is the payload at `at`."""
    return attrs(data, at, end_of(data, at))


def payload(data: bytes, at: int) -> bytes:
    return data[at : end_of(data, at)]


def attr_list(data: bytes, off: int, end: int) -> Iterator[tuple[int, int]]:
    """Like attrs() but keeps repeated types (lists of nested elements)."""
    unpack = NLA_HDR.unpack_from
    while off + 4 <= end:
        length, atype = unpack(data, off)
        if length < 4:
            break
        yield atype & NLA_TYPE_MASK, off + 4
        off += (length + 3) & ~3


def error_code(data: bytes, off: int) -> int:
    """errno (positive) of an NLMSG_ERROR payload; 0 is an ACK."""
    return -_S32(data, off)[0]


_U16 = struct.Struct("=H").unpack_from
_U32 = struct.Struct("=I").unpack_from
_S32 = struct.Struct("=i").unpack_from
_BE32 = struct.Struct(">i").unpack_from


def u8(data: bytes, at: int) -> int:
    return data[at]


def be16(data: bytes, at: int) -> int:
    return int(struct.unpack_from("!H", data, at)[0])


def u16(data: bytes, at: int) -> int:
    return _U16(data, at)[0]


def u32(data: bytes, at: int) -> int:
    return _U32(data, at)[0]


def s32(data: bytes, at: int) -> int:
    return _S32(data, at)[0]


def be32(data: bytes, at: int) -> int:
    return _BE32(data, at)[0]


def string(data: bytes, at: int) -> str:
    return data[at : end_of(data, at)].split(b"\0", 1)[0].decode(errors="replace")


def mac(data: bytes, at: int) -> str:
    return data[at : end_of(data, at)].hex(":")


def nud_state(state: int) -> str:
    if state == 0:
        return "NONE"
    names = [name for bit, name in NUD_STATES if state & bit]
    return ",".join(names) if names else f"0x{state:x}"
