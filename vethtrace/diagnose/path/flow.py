"""The packet being walked and what the walk says about it.

`Flow` is the question (from a namespace, to an address, a protocol and port);
`Packet` is the packet as it is at some hop (NAT rewrites it, so the walk
carries a copy); `Hop` is one decision with the table entry it came from;
`PathPrediction` is the answer: forward and reply hops and the first failing
decision. Plain dataclasses, so `to_dict` makes them JSON for scripts and for
check/ping, which will embed predictions in their own documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from vethtrace.model import Interface, Namespace, to_dict

Status = Literal["ok", "fail", "unknown"]
PROTOS = ("icmp", "tcp", "udp", "arp")


@dataclass
class Flow:
    src_netns: str  # namespace name the packet is sent from
    dst: str  # destination address
    proto: str = "icmp"
    port: int | None = None  # destination port (tcp/udp)
    sport: int = 40000  # source port (tcp/udp): any ephemeral port decides the same
    size: int = 84  # IP datagram length (ping's default: 56 bytes of payload)


@dataclass
class Packet:
    src: str | None
    dst: str
    proto: str
    sport: int | None = None
    dport: int | None = None
    size: int = 84
    reply: bool = False  # the answer (echo reply, SYN-ACK): conntrack calls it a reply
    # NAT still owed to this reply (de-DNAT happens at postrouting): new source
    unnat_src: str | None = None

    def copy(self) -> Packet:
        return replace(self)

    @property
    def df(self) -> bool:
        """Don't fragment: set on what the walk sends (ping -M do, TCP); an
        ICMP echo reply leaves without it (the kernel's ICMP socket is
        IP_PMTUDISC_DONT), so an MTU on its way fragments it instead of
        dropping it."""
        return not (self.reply and self.proto == "icmp")

    def describe(self) -> str:
        if self.proto in ("tcp", "udp"):
            return f"{self.proto} {self.src}:{self.sport} > {self.dst}:{self.dport}"
        kind = "echo reply" if self.reply else "echo request"
        return (
            f"{self.proto} {self.src} > {self.dst} {kind if self.proto == 'icmp' else ''}".strip()
        )


@dataclass
class Hop:
    netns: str
    interface: str | None
    step: str  # route, neigh, arp, veth, bridge, nft, forward, rp_filter, deliver, socket, ...
    decision: str  # what the kernel does, in a few words
    source: str = ""  # the table entry it came from: route, neighbour, fdb, flag, rule, sysctl
    status: Status = "ok"
    cause: str = ""  # for a failing (or unknown) decision: why
    fix: list[str] = field(default_factory=list)  # commands to paste
    # Where the decision that broke was made, when that is not where the packet
    # was lost: a reply with no route back blames the node that forwarded the
    # request out of its uplink without masquerading. (netns, interface) or None.
    blame: tuple[str, str | None] | None = None

    @property
    def where(self) -> str:
        return f"{self.netns}/{self.interface}" if self.interface else self.netns

    @property
    def culprit(self) -> tuple[str, str | None]:
        """(netns, interface) to name as the culprit of a failing decision."""
        return self.blame or (self.netns, self.interface)


@dataclass
class End:
    """Where one leg of the walk ended: delivered (to ns/iface, as pkt), failed or unknown."""

    kind: str  # delivered | failed | unknown
    ns: Namespace | None = None
    iface: Interface | None = None
    pkt: Packet | None = None


@dataclass
class PathPrediction:
    flow: Flow
    forward: list[Hop] = field(default_factory=list)
    reply: list[Hop] = field(default_factory=list)
    forward_outcome: str = "unknown"  # delivered | failed | unknown
    reply_outcome: str = "unknown"  # delivered | failed | unknown | none (arp: no reply leg)
    delivered_to: str | None = None  # netns/interface that took the packet

    @property
    def first_failure(self) -> Hop | None:
        """The first decision that lost the packet (forward, then reply)."""
        return next((h for h in self.forward + self.reply if h.status == "fail"), None)

    @property
    def first_unknown(self) -> Hop | None:
        return next((h for h in self.forward + self.reply if h.status == "unknown"), None)

    @property
    def ok(self) -> bool:
        return self.forward_outcome == "delivered" and self.reply_outcome in ("delivered", "none")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "flow": to_dict(self.flow),
            "ok": self.ok,
            "forward_outcome": self.forward_outcome,
            "reply_outcome": self.reply_outcome,
            "delivered_to": self.delivered_to,
            "forward": [to_dict(h) for h in self.forward],
            "reply": [to_dict(h) for h in self.reply],
        }
        failure = self.first_failure
        out["first_failure"] = to_dict(failure) if failure else None
        return out
