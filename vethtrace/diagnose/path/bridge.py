"""The Linux bridge, as the kernel decides for a frame one of its ports (or
its own stack) hands it: br_handle_frame (port state, learning), the FDB
lookup (local entries for the bridge's and its ports' own MACs -> the bridge's
stack; static and learned entries -> a port; none -> flood), br_flood's
per-port flood/bcast_flood flags, should_deliver (hairpin, forwarding state,
isolation), br_netfilter (bridged IP through the ip/inet forward hook when
bridge-nf-call-iptables=1) and nft bridge-family forward chains. VLAN
filtering (this kernel has none) and neigh_suppress are not modelled: an
*unknown* hop says so. Frames move between devices through l2.py.

A little over the ~400-line guide: the bridge's decision is one sequence
(ingress, FDB, flood flags, delivery, bridge-family chains at each hook) read
best in one file; its frame moves live in l2.py already.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from vethtrace.diagnose.path import l2flood, netfilter
from vethtrace.diagnose.path.flow import Hop
from vethtrace.diagnose.path.l2 import VLAN_HLEN, Dead, Frame, L2Result, dead_end
from vethtrace.model import FdbEntry, Interface, Namespace

if TYPE_CHECKING:
    from vethtrace.diagnose.path.walk import Walker


def _fdb_index(
    w: Walker, ns: Namespace, br: Interface
) -> tuple[dict[str, list[FdbEntry]], dict[str | None, Interface]]:
    """br's FDB entries by MAC (in the kernel's dump order) and its ports' own
    MACs (the first port holding one), once per topology: a 500-port bridge's
    FDB is looked up for every frame check predicts."""
    key = ("fdb", br.key)
    got = w.floods.get(key)
    if got is None:
        by_mac: dict[str, list[FdbEntry]] = {}
        for e in ns.fdb:
            if "self" in e.flags:
                continue
            if e.master not in (br.key.ifindex, None) or (
                e.master is None and e.ifindex != br.key.ifindex
            ):
                continue
            by_mac.setdefault(e.mac, []).append(e)
        port_macs: dict[str | None, Interface] = {}
        for p in l2flood.ports(w, ns, br):
            port_macs.setdefault(p.mac, p)
        got = w.floods[key] = (by_mac, port_macs)
    return got


def fdb_lookup(w: Walker, ns: Namespace, br: Interface, mac: str) -> tuple[str, int | None, str]:
    """("local"|"port"|"none", port ifindex, the entry) as br_fdb_find_rcu answers."""
    if mac == br.mac:
        return "local", None, f"fdb {mac} dev {br.name} (the bridge's own address)"
    by_mac, port_macs = _fdb_index(w, ns, br)
    static = None
    dynamic = None
    for e in by_mac.get(mac, ()):
        if "permanent" in e.flags:
            dev = ns.iface(e.ifindex)
            return (
                "local",
                None,
                f"fdb {mac} dev {dev.name if dev else e.ifindex} permanent (local)",
            )
        if "static" in e.flags:
            static = e
        else:
            dynamic = e
    p = port_macs.get(mac)
    if p is not None:
        return "local", None, f"fdb {mac} dev {p.name} permanent (a port's own address)"
    if static is not None:
        dev = ns.iface(static.ifindex)
        return "port", static.ifindex, f"fdb {mac} dev {dev.name if dev else static.ifindex} static"
    learned = w.learned.get(br.key, {}).get(mac)
    if learned is not None:
        dev = ns.iface(learned)
        return "port", learned, f"fdb {mac} dev {dev.name if dev else learned} (learned)"
    if dynamic is not None:
        dev = ns.iface(dynamic.ifindex)
        return (
            "port",
            dynamic.ifindex,
            f"fdb {mac} dev {dev.name if dev else dynamic.ifindex} (learned)",
        )
    return "none", None, f"no fdb entry for {mac}"


def bridge_input(
    w: Walker, br: Interface, port: Interface, frame: Frame, trail: list[Hop]
) -> L2Result:
    ns = w.ns_of(br)
    bp = port.bridge_port
    state = bp.state if bp else "forwarding"
    if not br.admin_up:
        return dead_end(
            trail,
            w.hop(
                ns,
                port,
                "bridge",
                f"bridge {br.name} is down: port disabled",
                f"link {br.name} state DOWN",
                "fail",
                f"{br.name} is down, so all its ports are disabled and drop frames",
                [w.cmd(ns, f"ip link set {br.name} up")],
            ),
        )
    if br.vlan_filtering:
        return dead_end(
            trail,
            w.hop(
                ns,
                port,
                "bridge",
                "VLAN filtering",
                f"bridge {br.name} vlan_filtering 1",
                "unknown",
                "bridge VLAN filtering is not modelled",
            ),
        )
    if state not in ("forwarding", "learning"):
        return dead_end(
            trail,
            w.hop(
                ns,
                port,
                "bridge",
                f"port {port.name} is {state}: frame dropped",
                f"bridge link {port.name} state {state}",
                "fail",
                f"a bridge port in state {state} drops what it receives",
                [w.cmd(ns, f"bridge link set dev {port.name} state 3")],
            ),
        )
    # NF_BR_PRE_ROUTING (nf_hook_bridge_pre) runs before br_handle_frame_finish learns
    trail, ok = netfilter.bridge_hook(w, ns, "prerouting", frame.pkt, port.name, None, trail)
    if not ok:
        return L2Result(dead=[Dead(trail)])
    if bp is not None and bp.learning and frame.src_mac:
        w.learned.setdefault(br.key, {})[frame.src_mac] = port.key.ifindex
    if state == "learning":
        return dead_end(
            trail,
            w.hop(
                ns,
                port,
                "bridge",
                f"port {port.name} is learning: frame dropped",
                f"bridge link {port.name} state learning",
                "fail",
                "a port in the learning state learns addresses but forwards nothing",
                [w.cmd(ns, f"bridge link set dev {port.name} state 3")],
            ),
        )
    if frame.pkt is None and bp is not None and bp.neigh_suppress:
        return dead_end(
            trail,
            w.hop(
                ns,
                port,
                "bridge",
                "neigh_suppress",
                f"bridge link {port.name} neigh_suppress on",
                "unknown",
                "neigh_suppress is not modelled",
            ),
        )
    return bridge_forward(w, br, port, frame, trail)


def bridge_forward(
    w: Walker, br: Interface, ingress: Interface | None, frame: Frame, trail: list[Hop]
) -> L2Result:
    """Where br sends a frame that arrived on `ingress` (None: br's own stack sent it)."""
    ns = w.ns_of(br)
    out = L2Result()
    ports: list[Interface] = []  # filled below only when br floods
    # the hop says which port when the bridge has several to flood to (even if
    # the walk follows only the ports that matter)
    fanout = len(l2flood.ports(w, ns, br)) - (
        ingress is not None and ingress.master == br.key.ifindex
    )
    at = ingress or br
    if frame.dst_mac is None:
        flag = "bcast_flood"
        targets = ports = l2flood.worth_flooding(w, ns, br, ingress, frame)
        decision = f"{br.name} floods the broadcast"
        source = "broadcast"
        if ingress is not None:  # delivered up to the bridge's own stack too
            out.reached.append(
                (
                    br,
                    [
                        *trail,
                        w.hop(ns, br, "bridge", f"{br.name} takes the broadcast up", "broadcast"),
                    ],
                )
            )
    else:
        kind, port_index, source = fdb_lookup(w, ns, br, frame.dst_mac)
        if kind == "local":
            if ingress is None:
                out.reached.append((br, trail))
                return out
            up = [*trail, w.hop(ns, ingress, "bridge", f"to {br.name}'s own stack", source)]
            # br_pass_frame_up: NF_BR_LOCAL_IN
            up, ok = netfilter.bridge_hook(w, ns, "input", frame.pkt, ingress.name, None, up)
            if ok:
                out.reached.append((br, up))
            else:
                out.dead.append(Dead(up))
            return out
        if kind == "port":
            target = ns.iface(port_index)
            if target is None:
                return out
            if ingress is not None and target.key == ingress.key:
                hair = ingress.bridge_port is not None and ingress.bridge_port.hairpin
                if not hair:
                    return dead_end(
                        trail,
                        w.hop(
                            ns,
                            ingress,
                            "bridge",
                            f"{frame.dst_mac} is behind the ingress port",
                            source,
                            "fail",
                            f"the FDB puts {frame.dst_mac} behind {ingress.name}, where "
                            "the frame came from, and hairpin is off",
                            [w.cmd(ns, f"bridge link set dev {ingress.name} hairpin on")],
                        ),
                    )
            targets, flag, decision = [target], "", f"{br.name} forwards to {target.name}"
        else:
            ports = l2flood.worth_flooding(w, ns, br, ingress, frame)
            targets, flag, decision = (
                ports,
                "flood",
                f"{br.name} floods unknown unicast {frame.dst_mac}",
            )
    if frame.pkt is not None and ingress is not None:
        verdict, hops = netfilter.br_netfilter(w, ns, br, frame.pkt)
        trail = trail + hops
        if verdict != "accept":
            out.dead.append(Dead(trail))
            return out
    for q in targets:
        bq = q.bridge_port
        qstate = bq.state if bq else "forwarding"
        hop_src = source
        # br_flood: bcast_flood off holds back broadcasts that came in on a port,
        # never the bridge's own (skb->dev == br->dev); flood off holds back
        # unknown unicast whoever sent it
        own = ingress is None and flag == "bcast_flood"
        if flag and bq is not None and not getattr(bq, flag) and not own:
            out.add(
                dead_end(
                    trail,
                    w.hop(
                        ns,
                        q,
                        "bridge",
                        f"{flag} off on {q.name}: not flooded there",
                        f"bridge link {q.name} {flag} off",
                        "fail",
                        f"{q.name} has {flag} off, so {br.name} does not flood "
                        f"{'broadcasts' if flag == 'bcast_flood' else 'unknown unicast'} "
                        f"to it"
                        + (
                            ""
                            if flag == "bcast_flood" or bq.learning
                            else f", and with learning off on {q.name} its hosts' "
                            "addresses are never in the FDB"
                        ),
                        [w.cmd(ns, f"bridge link set dev {q.name} {flag} on")],
                    ),
                )
            )
            continue
        if qstate != "forwarding":
            peer = _down_peer(w, q) if qstate == "disabled" else None
            h = w.hop(
                ns,
                q,
                "bridge",
                f"port {q.name} is {qstate}: not sent there",
                f"bridge link {q.name} state {qstate}",
                "fail",
                f"a bridge port in state {qstate} transmits nothing"
                + (
                    f" (its veth peer {peer[0].name}/{peer[1].name} is down"
                    + (", and so is the port)" if not q.admin_up else ": no carrier)")
                    if peer is not None
                    else " (it is down)"
                    if qstate == "disabled"
                    else ""
                ),
                [w.cmd(peer[0], f"ip link set {peer[1].name} up")] if peer is not None else [],
            )
            if qstate != "disabled":
                h.fix.append(w.cmd(ns, f"bridge link set dev {q.name} state 3"))
            elif not q.admin_up:
                h.fix.append(w.cmd(ns, f"ip link set {q.name} up"))
            if peer is not None:
                # the end that holds the stack (the pod's eth0) speaks for the pair,
                # as check's interface-down/veth-peer-down do
                h.blame = (peer[0].name, peer[1].name)
            out.add(dead_end(trail, h))
            continue
        if (
            ingress is not None
            and ingress.bridge_port
            and ingress.bridge_port.isolated
            and bq
            and bq.isolated
        ):
            out.add(
                dead_end(
                    trail,
                    w.hop(
                        ns,
                        q,
                        "bridge",
                        f"{ingress.name} and {q.name} are isolated",
                        f"bridge link {q.name} isolated on",
                        "fail",
                        "two isolated ports never exchange frames",
                        [w.cmd(ns, f"bridge link set dev {q.name} isolated off")],
                    ),
                )
            )
            continue
        # __br_forward: NF_BR_FORWARD (NF_BR_LOCAL_OUT for the bridge's own
        # frames), then br_forward_finish: NF_BR_POST_ROUTING
        hops, ok = netfilter.bridge_hook(
            w, ns, "forward" if ingress else "output", frame.pkt,
            ingress.name if ingress else None, q.name, [],
        )  # fmt: skip
        if ok:
            hops, ok = netfilter.bridge_hook(w, ns, "postrouting", frame.pkt, None, q.name, hops)
        if not ok:
            out.dead.append(Dead(trail + hops))
            continue
        fq = frame
        if frame.pkt is not None:
            fq, dead = _egress_mtu(w, ns, br, q, frame, trail + hops)
            if dead is not None:
                out.add(dead)
                continue
        if frame.dst_mac is None and l2flood.bystander(w, q, frame):
            continue
        hop = w.hop(
            ns,
            at,
            "bridge",
            decision
            if (fanout if targets is ports else len(targets)) == 1
            else f"{decision}: {q.name}",
            hop_src,
        )
        out.add(l2flood.flood_to(w, q, fq, trail + hops + [hop]))
    return out


def _egress_mtu(
    w: Walker, ns: Namespace, br: Interface, q: Interface, frame: Frame, trail: list[Hop]
) -> tuple[Frame, L2Result | None]:
    """br_dev_queue_push_xmit: a frame longer than port q's MTU is dropped
    (is_skb_forwardable allows VLAN_HLEN more). With br_netfilter,
    br_nf_dev_queue_xmit holds IPv4 to q's MTU exactly and fragments what may
    be fragmented (br_nf_ip_fragment), dropping only DF packets."""
    pkt = frame.pkt
    assert pkt is not None
    brnf = ns.sysctls.get("net.bridge.bridge-nf-call-iptables") == "1"
    limit = q.mtu if brnf else q.mtu + VLAN_HLEN
    if frame.size <= limit:
        return frame, None
    if brnf and not pkt.df:
        return replace(frame, size=q.mtu), None
    return frame, dead_end(
        trail,
        w.hop(
            ns,
            q,
            "mtu",
            f"{frame.size}-byte frame over {q.name}'s MTU {q.mtu}: not sent",
            f"mtu {q.name} {q.mtu}",
            "fail",
            f"{br.name} drops frames longer than the MTU of the port they leave by "
            f"(br_dev_queue_push_xmit): {q.name} has {q.mtu}",
            [w.cmd(ns, f"ip link set {q.name} mtu {max(br.mtu, frame.size)}")],
        ),
    )


def _down_peer(w: Walker, q: Interface) -> tuple[Namespace, Interface] | None:
    """q's veth peer when it is down: the kernel disables a port without
    carrier, so the fix is the peer's (and q's own, if q is down too)."""
    if q.kind != "veth" or q.peer is None:
        return None
    peer = w.topo.iface(q.peer)
    pns = w._by_inode.get(q.peer.netns)
    if peer is None or pns is None or peer.admin_up:
        return None
    return pns, peer
