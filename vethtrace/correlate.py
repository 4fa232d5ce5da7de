"""Kernel events and sniffed frames -> one PacketPath per packet, hop by hop.

Why this is not a simple group-by:

* skb addresses recycle within microseconds (a clone freed at one point is
  reused 40 µs later for a different packet in another namespace). A packet is
  therefore tracked by the key (skb address, skb->head), and the key is retired
  when the kernel frees or consumes that skb (kfree_skb / consume_skb).
* Frees are not always seen (in real `trace udp -n ...` recordings no
  consume_skb retired the datagrams delivered to a socket), so a dead packet's
  (skb, head) comes back as the next datagram of the flow. A join by
  identity is refused when the event contradicts the packet: another IPv4 id,
  or a second crossing of a (point, interface) the packet already crossed (an
  skb is queued, sent and received once per device; a repeat is a new packet
  in a recycled buffer). An ARP event never joins an IP packet (nor the other
  way round) whatever links them: the neighbour probe's ARP for a queued
  encapsulated packet otherwise joined that packet's path.
* Clones (bridge floods, the neighbour probe's copy of a queued packet, raw
  socket delivery) get a new address but share `head`: an unknown address with
  a live head is the same packet, seen as a copy.
* veth transmission is synchronous: the peer's netif_rx happens *inside* the
  sender's transmit call, so the sender's net_dev_xmit (the "done" of the send)
  is stamped after the peer already received the frame. Events are sorted by
  their kernel timestamp, and each hop is placed at the time of its *first*
  event (net_dev_queue for a send), which puts a veth send before the peer's
  receive again; the completion only adds its return code to the send hop.
* Sniffers (and events that carry no skb, such as kernel events without a
  decoded packet) are matched by what the packet *is* — ARP op/sender/target,
  ICMP type/id/seq, addresses — within a short time window, because a socket
  tap never sees the skb address.
* Header equality names one packet only where the headers carry a per-packet
  number: ARP (retries are >= 1 s apart), ICMP echo id/seq, and TCP/UDP with
  their IPv4 id. Ports alone name a *flow*: every datagram of an iperf3 run
  has them. So a kernel event that has an skb identity joins a TCP/UDP packet
  by headers only when both carry the same non-zero IPv4 id (a copy the kernel
  made with skb_copy, new address and buffer); without an id (0 from some
  unconnected sockets, absent in old recordings) identity alone decides, and
  a copy without one shows as a second path rather than many datagrams as one.
  Sniffed frames have no identity, so they keep the time-window match (with
  the IPv4 id when they have it).

Pure logic over model objects (no root, no bcc, no scapy): `report` runs it on
recordings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from vethtrace.model import Hop, PacketPath, PacketSummary, ProbeEvent, Topology
from vethtrace.points import (
    DROP_POINT,
    FREE_POINTS,
    RX_POINTS,
    SNIFF,
    TX_DONE,
    TX_POINTS,
    is_benign_drop,
)

# Signature matches further apart than this are different packets (ARP and ping
# retransmit after >= 1 s, so 200 ms cannot join two transmissions).
MATCH_WINDOW_NS = 200_000_000
# An echo's id/seq names one send: its copies (the ARP-queue probe clones freed
# every second while ARP retries) are the same packet however far apart.
ECHO_WINDOW_NS = 10_000_000_000

# Without a topology, namespaces are named by inode (Topology.netns_name).
_NO_TOPOLOGY = Topology()

# A transmit completes within this long after its last inner event (nested veth xmit).
NEST_WINDOW_NS = 5_000_000


def signature(p: PacketSummary | None) -> tuple | None:
    """What makes two observations the same packet, when no skb identity links them."""
    if p is None:
        return None
    if p.arp_op is not None:
        return ("arp", p.arp_op, p.arp_spa, p.arp_tpa)
    if p.icmp_type is not None:
        return ("icmp", p.icmp_type, p.ip_src, p.ip_dst, p.icmp_id, p.icmp_seq, p.icmp_code)
    if p.ip_src is not None:
        return ("ip", p.ip_proto, p.ip_src, p.ip_dst, p.sport, p.dport, p.ip_id)
    return None


def names_one_packet(sig: tuple) -> bool:
    """Does this signature name one transmission, not just a flow (see module docstring)?"""
    return sig[0] != "ip" or bool(sig[-1])


def phase(ev: ProbeEvent) -> str:
    """tx | tx-done | rx | drop | consume | sniff-out | sniff-in | other."""
    if ev.source == SNIFF or ev.point == SNIFF:
        return "sniff-out" if ev.extra.get("direction") == "outgoing" else "sniff-in"
    if ev.point in TX_POINTS:
        return "tx"
    if ev.point in TX_DONE:
        return "tx-done"
    if ev.point in RX_POINTS:
        return "rx"
    if ev.point in FREE_POINTS:
        if ev.point != DROP_POINT or ev.drop_reason in (None, "", "CONSUMED"):
            return "consume"
        return "drop"
    return "other"


@dataclass
class Packet:
    """One logical packet while correlating: all its events, copies included."""

    pid: int
    summary: PacketSummary | None = None
    events: list[ProbeEvent] = field(default_factory=list)
    keys: set[tuple[int, int]] = field(default_factory=set)  # live (skb, head)
    first_ns: int = 0
    last_ns: int = 0
    crossed: set[tuple[str, int, int]] = field(default_factory=set)  # (point, netns, ifindex)

    @property
    def kind(self) -> str:
        return self.summary.kind if self.summary else "unknown"

    @property
    def sig(self) -> tuple | None:
        return signature(self.summary)

    def add(self, ev: ProbeEvent) -> None:
        if not self.events:
            self.first_ns = ev.ts_ns
        self.events.append(ev)
        self.last_ns = max(self.last_ns, ev.ts_ns)
        if ev.skb and phase(ev) in ("tx", "rx"):
            self.crossed.add((ev.point, ev.netns, ev.ifindex))
        if self.summary is None and ev.packet is not None and signature(ev.packet):
            self.summary = ev.packet


def contradicts(pkt: Packet, ev: ProbeEvent) -> bool:
    """Can `ev` not be an event of `pkt`, although identity or headers link them?
    A kernel crossing the packet already made, or another IPv4 id: the skb
    address and buffer were recycled for the next packet (module docstring)."""
    if ev.skb and phase(ev) in ("tx", "rx") and (ev.point, ev.netns, ev.ifindex) in pkt.crossed:
        return True
    a, b = pkt.summary, ev.packet
    if a is None or b is None:
        return False
    sa, sb = signature(a), signature(b)
    if sa is not None and sb is not None and sa[0] != sb[0]:
        return True  # an ARP is never the same skb as an IP packet: a recycled buffer
    return None not in (a.ip_id, b.ip_id) and a.ip_id != b.ip_id


def group(events: Iterable[ProbeEvent]) -> list[Packet]:
    """Assign every packet event to a logical packet (see module docstring)."""
    packets: list[Packet] = []
    by_key: dict[tuple[int, int], Packet] = {}
    by_head: dict[int, Packet] = {}
    by_sig: dict[tuple, Packet] = {}
    by_addr: dict[int, Packet] = {}  # last packet seen at each skb address

    def new(ev: ProbeEvent) -> Packet:
        p = Packet(pid=len(packets) + 1)
        packets.append(p)
        return p

    for ev in sorted(events, key=lambda e: e.ts_ns):
        ph = phase(ev)
        if ph == "other":
            continue  # neighbour, fdb, fib... events are not packet hops
        sig = signature(ev.packet)
        pkt: Packet | None = None
        key = (ev.skb, ev.head) if ev.skb else None
        if ph == "tx-done" and ev.skb:
            # net_dev_xmit must not read the skb (no head) and, nested, it fires
            # after the peer may have freed it: the last packet at that address
            last = by_addr.get(ev.skb)
            if last is not None and ev.ts_ns - last.last_ns <= NEST_WINDOW_NS:
                last.add(ev)
            continue
        if key is not None:
            pkt = by_key.get(key)
            if pkt is None and ev.head and ev.head in by_head:
                pkt = by_head[ev.head]  # a clone: new address, same data buffer
            if pkt is not None and contradicts(pkt, ev):
                pkt.keys.discard(key)  # its free went unseen: retire it now
                pkt = None
        if pkt is None and sig is not None and (key is None or names_one_packet(sig)):
            cand = by_sig.get(sig)
            window = ECHO_WINDOW_NS if sig[0] == "icmp" and sig[5] is not None else MATCH_WINDOW_NS
            if cand is not None and ev.ts_ns - cand.last_ns <= window and not contradicts(cand, ev):
                pkt = cand
        if pkt is None:
            if key is None and sig is None:
                continue  # nothing links it to anything: skip
            if ph in ("consume", "drop", "tx-done") and sig is None:
                continue  # the end of a packet we never saw begin (not ours)
            pkt = new(ev)
        pkt.add(ev)
        if sig is not None and pkt.sig is not None:
            by_sig[pkt.sig] = pkt
        if key is not None:
            by_addr[ev.skb] = pkt
            if ph in ("consume", "drop"):
                pkt.keys.discard(key)
                by_key.pop(key, None)
                if ev.head and not any(k[1] == ev.head for k in pkt.keys):
                    by_head.pop(ev.head, None)
            else:
                pkt.keys.add(key)
                by_key[key] = pkt
                if ev.head:
                    by_head[ev.head] = pkt
    return [p for p in packets if p.summary is not None]


def _iface_name(topo: Topology | None, ev: ProbeEvent) -> str:
    if ev.ifname:
        return ev.ifname
    it = topo.iface(ev.key) if topo else None
    return it.name if it else f"if{ev.ifindex}"


def master_of(topo: Topology | None, netns: int, ifindex: int) -> int | None:
    if topo is None:
        return None
    ns = topo.netns(netns)
    it = ns.iface(ifindex) if ns else None
    return it.master if it else None


_PHASE_TEXT = {
    "tx": "sent",
    "rx": "received",
    "drop": "dropped",
    "consume": "consumed",
    "sniff-out": "sniffed leaving",
    "sniff-in": "sniffed arriving",
}


# Where a frame crossed an interface: kernel tx/rx and the sniffer's outgoing/incoming
# are the same crossing seen by two observers, so they share one hop.
_CROSSING = {"tx": "tx", "sniff-out": "tx", "rx": "rx", "sniff-in": "rx"}
# Copies freed by packet sockets (our own sniffers, tcpdump) are not hops of the packet.
TAP_LOCATIONS = {"packet_recvmsg", "packet_rcv", "tpacket_rcv", "skb_free_datagram"}
QUEUE_LOCATIONS = {"__neigh_event_send", "neigh_timer_handler", "neigh_probe"}


def _location(ev: ProbeEvent) -> str:
    return (ev.location or "").split("+")[0]


def hops_of(pkt: Packet, topo: Topology | None) -> list[Hop]:
    """Collapse a packet's events into hops: one per interface crossing (tx or rx)
    and one per drop/consume point, in time order.

    Kernel events come first and set each hop's time; a sniffer observation
    then joins the kernel hop of the same interface and direction (the same
    crossing, seen by tcpdump's eyes) or, where no probe saw the crossing,
    makes its own hop. Sniffed times come from the socket's clock, converted,
    and several taps of one skb share its stamp, so they never order hops
    that the kernel saw. Last, an rx on a master (bridge, bond) is marked as
    handed up by its port's rx_handler when the port received it too."""
    hops: list[Hop] = []
    index: dict[tuple[int, int, str], Hop] = {}
    describe = pkt.summary.describe() if pkt.summary else "-"
    events = sorted(pkt.events, key=lambda e: (phase(e).startswith("sniff"), e.ts_ns))
    for ev in events:
        ph = phase(ev)
        iface = (ev.netns, ev.ifindex)
        if ph == "tx-done":
            hop = index.get((*iface, "tx"))
            rc = ev.extra.get("rc")
            if hop is not None and rc not in (None, 0):
                hop.ok = False
                hop.note = _join(hop.note, f"transmit failed (rc={rc})")
            continue
        socket_copy = not ev.ifindex or _location(ev) in TAP_LOCATIONS
        if ph in ("drop", "consume") and socket_copy and (ph == "consume" or is_benign_drop(ev)):
            continue  # a socket's copy (sniffer, raw socket), not the packet's path
        kind = _CROSSING.get(ph, ph)
        key = (*iface, kind)
        sniffer = ph.startswith("sniff")
        if key in index:
            hop = index[key]
            if sniffer:
                hop.sniffed = True
            elif (
                kind in ("drop", "consume")
                and ev.location
                and ev.location not in hop.note
                and not hop.note.startswith("waits")
            ):
                hop.note = _join(hop.note, f"also at {ev.location}")
            continue
        hop = Hop(
            netns=(topo or _NO_TOPOLOGY).netns_name(ev.netns),
            interface=_iface_name(topo, ev),
            point=ev.point,
            packet=describe,
            ts_ns=ev.ts_ns,
            ok=True,
            note=_PHASE_TEXT.get(ph, ph),
            sniffed=sniffer,
        )
        if ph == "drop":
            benign = is_benign_drop(ev)
            hop.ok = benign
            where = f" at {ev.location}" if ev.location else ""
            hop.note = f"{'freed (benign)' if benign else 'dropped'}: {ev.drop_reason}{where}"
        elif ph == "consume":
            if _location(ev) in QUEUE_LOCATIONS:
                hop.note = "waits in the ARP queue (a probe copy is freed)"
            else:
                hop.note = f"consumed{' at ' + ev.location if ev.location else ''}"
        if ev.packet is not None and ev.packet.encap is not None:
            hop.note = f"{hop.note} {ev.packet.encap.describe()}"  # crossed inside the tunnel
        hops.append(hop)
        index[key] = hop
    _mark_handed_up(index, topo)
    hops.sort(key=lambda h: h.ts_ns)
    return hops


def _mark_handed_up(index: dict[tuple[int, int, str], Hop], topo: Topology | None) -> None:
    """rx on a master right after rx on one of its ports: the port's rx_handler
    (bridge, bond, macvlan...) passed the frame up to the master's stack."""
    if topo is None:
        return
    for (netns, ifindex, kind), hop in index.items():
        if kind != "rx":
            continue
        for (pns, pidx, pkind), phop in index.items():
            if pkind != "rx" or pns != netns or pidx == ifindex:
                continue
            if master_of(topo, pns, pidx) == ifindex:
                hop.note = f"handed up from port {phop.interface} by its rx_handler"
                hop.ts_ns = max(hop.ts_ns, phop.ts_ns + 1)  # after the port, even if sniffed


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def outcome_of(pkt: Packet) -> tuple[str, str | None]:
    """dropped | consumed | delivered | queued | in-flight, and the drop reason,
    from the packet's events. `diverted` is not decided here: it needs the
    topology's reading of the hops (diagnose.verdict.diverted.mark_diversion).

    A packet waiting for its next hop's MAC sits in the neighbour entry's queue;
    what the kernel frees meanwhile is a probe's copy (consume_skb at
    __neigh_event_send / neigh_probe), not the packet. So those frees do not
    make it "consumed": until it is sent on (a transmit after them) it is
    `queued`, and when the entry fails the queue is freed as NEIGH_FAILED (or
    QUEUE_PURGE), which is a drop (docs/kernel-notes.md)."""
    reason = None
    for ev in pkt.events:
        if phase(ev) == "drop" and not is_benign_drop(ev):
            reason = ev.drop_reason
    if reason:
        return "dropped", reason
    waits = [
        e.ts_ns for e in pkt.events if phase(e) == "consume" and _location(e) in QUEUE_LOCATIONS
    ]
    if any(phase(e) == "consume" and _location(e) not in QUEUE_LOCATIONS for e in pkt.events):
        return "consumed", None
    if any(phase(e) in ("rx", "sniff-in") for e in pkt.events):
        return "delivered", None
    if waits and not any(phase(e) == "tx" and e.ts_ns > max(waits) for e in pkt.events):
        return "queued", None
    return "in-flight", None


def correlate_packets(
    events: Iterable[ProbeEvent], topo: Topology | None = None
) -> list[tuple[Packet, PacketPath]]:
    """Like correlate(), keeping each path's raw events (the verdict needs drop details)."""
    out = []
    for pkt in group(events):
        hops = hops_of(pkt, topo)
        outcome, reason = outcome_of(pkt)
        path = PacketPath(
            kind=pkt.kind,
            hops=hops,
            outcome=outcome,
            drop_reason=reason,
            summary=pkt.summary,
            first_ns=pkt.first_ns,
        )
        out.append((pkt, path))
    return out


def correlate(events: Iterable[ProbeEvent], topo: Topology | None = None) -> list[PacketPath]:
    """Events (kernel and sniffer, any order) -> packet paths in time order."""
    return [path for _pkt, path in correlate_packets(events, topo)]
