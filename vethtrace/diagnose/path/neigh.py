"""Neighbour resolution: the entry the egress device holds, and who would
answer an ARP request for the next hop (arp_process): the owner of the
address (unless arp_ignore or arp_filter tell it not to), a forwarding
interface with proxy_arp or a proxy entry whose route to the address leaves
through another device, or no one. The answer must also travel back to the
asker (a port that neither learns nor receives floods loses it).

A little over the ~400-line guide: arp_process's checks (input routing of the
request, arp_ignore, arp_filter, proxies) and arp_solicit's sender follow the
kernel's order, and a split would cut that order in two.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vethtrace.diagnose.path import deliver, l2
from vethtrace.diagnose.path.flow import Hop
from vethtrace.diagnose.path.route import (
    SCOPE_NUM,
    conf,
    conf_source,
    inet_select_addr,
    ip,
    local_address,
    lookup,
    net,
)
from vethtrace.model import Interface, Namespace

if TYPE_CHECKING:
    from vethtrace.diagnose.path.walk import Walker

STABLE = ("PERMANENT", "NOARP")
VALID = ("REACHABLE", "STALE", "DELAY", "PROBE")


def answer(
    w: Walker, rns: Namespace, rif: Interface, tip: str, sip: str | None
) -> tuple[bool, str, str, list[str], int]:
    """Would rif (which received a request for tip from sip) reply?
    (yes, why, source, fix, relevance: 2 owner, 1 could proxy, 0 unrelated)."""
    if sip is None:
        sip = "0.0.0.0"
    res = lookup(rns, tip, sip, iif=rif.name, memo=w.floods)
    if res.kind == "local":
        # arp_process routes the request as input (ip_route_input_noref): the
        # sender's address must pass fib_validate_source before anyone answers
        bad = _invalid_sender(w, rns, rif, sip, tip, None)
        if bad is not None:
            return (False, *bad, 2)
        owner = local_address(rns, tip, w.floods)
        level = conf(rns, rif, "arp_ignore")
        mine = [a for a in rif.addresses if a.address == tip]
        src = conf_source(rif, "arp_ignore")
        # arp.c arp_ignore(): 1 and 2 ask the receiving device (inet_confirm_addr
        # on its in_dev), 3 asks every device of the namespace (in_dev NULL) for
        # tip with a scope up to link (route_localnet counts host as link), 8
        # never answers, 4-7 are reserved and answer
        if level == 3 and not _confirmed_link_scope(rns, tip):
            return (
                False,
                f"arp_ignore=3: {tip} has scope host",
                f"{src}=3",
                [
                    w.cmd(
                        rns,
                        f"sysctl -w net.ipv4.conf.all.arp_ignore=0 "
                        f"net.ipv4.conf.{rif.name}.arp_ignore=0",
                    )
                ],
                2,
            )
        if level == 8 or (level in (1, 2) and not mine):
            return (
                False,
                f"arp_ignore={level}: {tip} is not on {rif.name}",
                f"{src}={level}",
                [
                    w.cmd(
                        rns,
                        f"sysctl -w net.ipv4.conf.all.arp_ignore=0 "
                        f"net.ipv4.conf.{rif.name}.arp_ignore=0",
                    )
                ],
                2,
            )
        if level == 2 and not any(ip(sip) in net(a.cidr) for a in mine):
            return (
                False,
                f"arp_ignore=2: sender {sip} is outside {rif.name}'s subnet",
                f"{src}=2",
                [
                    w.cmd(
                        rns,
                        f"sysctl -w net.ipv4.conf.all.arp_ignore=0 "
                        f"net.ipv4.conf.{rif.name}.arp_ignore=0",
                    )
                ],
                2,
            )
        if conf(rns, rif, "arp_filter"):
            back = lookup(rns, sip, tip, memo=w.floods)
            if back.oif is None or back.oif.key != rif.key:
                return (
                    False,
                    f"arp_filter: the route back to {sip} does not leave {rif.name}",
                    conf_source(rif, "arp_filter") + "=1",
                    [
                        w.cmd(
                            rns,
                            f"sysctl -w net.ipv4.conf.all.arp_filter=0 "
                            f"net.ipv4.conf.{rif.name}.arp_filter=0",
                        )
                    ],
                    2,
                )
        who = f"{owner.name} holds {tip}" if owner else f"{tip} is local"
        return True, f"{who}: answers", f"local {tip} on {rns.name}", [], 2
    proxy_on = conf(rns, rif, "proxy_arp")
    pentry = any(
        p.address == tip and p.ifindex in (rif.key.ifindex, 0) for p in rns.proxy_neighbours
    )
    other_dev = res.kind == "unicast" and res.oif is not None and res.oif.key != rif.key
    if res.kind != "unicast":
        return False, f"{rns.name} has no route to {tip}", res.describe(), [], 0
    if not other_dev:
        return False, f"the route to {tip} leaves through {rif.name} itself", res.describe(), [], 0
    forwarding = conf(rns, rif, "forwarding")
    if (proxy_on or pentry) and not forwarding:
        return (
            False,
            f"{'proxy_arp' if proxy_on else 'a proxy entry'} on {rif.name}, but forwarding "
            f"is off there",
            conf_source(rif, "forwarding") + "=0",
            [w.cmd(rns, f"sysctl -w net.ipv4.conf.{rif.name}.forwarding=1")],
            1,
        )
    if proxy_on or pentry:
        bad = _invalid_sender(w, rns, rif, sip, tip, res.oif)
        if bad is not None:
            return (False, *bad, 1)
    if proxy_on:
        return (
            True,
            f"proxy_arp on {rif.name}: answers for {tip}",
            conf_source(rif, "proxy_arp") + "=1",
            [],
            1,
        )
    if pentry:
        return True, f"proxy entry for {tip}: answers", f"neigh proxy {tip} dev {rif.name}", [], 1
    return (
        False,
        f"{rif.name} routes {tip} via {res.oif.name if res.oif else '?'} but proxy_arp is off",
        conf_source(rif, "proxy_arp") + "=0",
        [w.cmd(rns, f"sysctl -w net.ipv4.conf.{rif.name}.proxy_arp=1")],
        1,
    )


def _invalid_sender(
    w: Walker, rns: Namespace, rif: Interface, sip: str, tip: str, oif: Interface | None
) -> tuple[str, str, list[str]] | None:
    """Why ip_route_input refuses an ARP request's sender address on rif (a
    martian local source, the reverse path filter), as (why, source, fix)."""
    if sip == "0.0.0.0":  # an address probe: arp_process answers it without routing
        return None
    if deliver.martian_local(w, rns, rif, sip):
        return (
            f"the sender {sip} is one of {rns.name}'s own addresses",
            conf_source(rif, "accept_local") + "=0",
            [],
        )
    failed = deliver.rpf_failure(w, rns, rif, sip, tip, oif)
    if failed is None:
        return None
    mode, how = failed
    return (
        f"rp_filter={mode} drops the request from {sip}: {how}",
        conf_source(rif, "rp_filter") + f"={mode}",
        [w.cmd(rns, f"ip route add {sip} dev {rif.name}")],
    )


def _confirmed_link_scope(rns: Namespace, tip: str) -> bool:
    """inet_confirm_addr(net, NULL, 0, tip, RT_SCOPE_LINK): some device holds tip
    with scope global or link (host scope only where route_localnet is on)."""
    return any(
        a.address == tip and (a.scope != "host" or conf(rns, i, "route_localnet"))
        for i in rns.interfaces
        for a in i.addresses
    )


def arp(
    w: Walker, ns: Namespace, oif: Interface, tip: str, sip: str | None
) -> tuple[str | None, list[Hop]]:
    """Broadcast a request for tip out of oif; the MAC that comes back (or None) and the hops."""
    frame = l2.Frame(oif.mac, None)
    seen, learned = set(w.l2_seen), {k: dict(v) for k, v in w.learned.items()}
    w.arp_for = tip  # stacks that cannot answer are not followed (l2flood.bystander)
    try:
        reached = l2.send(w, oif, frame, [])
    finally:
        w.arp_for = None
    if not any(
        r.key != oif.key and may_answer(w.ns_of(r), r, tip, w.floods) for r, _t in reached.reached
    ):
        w.l2_seen, w.learned = seen, learned  # nobody can answer: walk it all, to say who heard
        reached = l2.send(w, oif, frame, [])
    best: tuple[int, Interface, Namespace, tuple[bool, str, str, list[str], int]] | None = None
    bystander = None
    for rif, trail in reached.reached:
        if rif.key == oif.key:
            continue
        rns = w.ns_of(rif)
        if not may_answer(rns, rif, tip, w.floods):
            # neither holds tip nor proxies: answer() would say "unrelated"; ask it
            # only if nobody better turns up (a flood reaches hundreds of these)
            bystander = bystander or (rif, trail)
            continue
        verdict = answer(w, rns, rif, tip, sip)
        rank = verdict[4] * 2 + (1 if verdict[0] else 0)
        if best is None or rank > best[0]:
            best = (rank, rif, rns, verdict)
            best_trail = trail
    if best is None and bystander is not None:
        rif, best_trail = bystander
        rns = w.ns_of(rif)
        best = (0, rif, rns, answer(w, rns, rif, tip, sip))
    if best is None:
        if reached.worst():
            return None, reached.worst()
        return None, [
            w.hop(
                ns,
                oif,
                "arp",
                f"who-has {tip}: the request reaches no one",
                "",
                "fail",
                f"no IP stack receives a broadcast sent out of {oif.name}",
            )
        ]
    _rank, rif, rns, (yes, why, source, fix, relevance) = best
    if not yes and not relevance and reached.worst():
        return None, reached.worst()  # the broadcast died on the way to the one that matters
    if not yes:
        cause = why if relevance else f"no interface answers ARP for {tip}: {why}"
        return None, [
            *best_trail,
            w.hop(rns, rif, "arp", f"who-has {tip}: no answer ({why})", source, "fail", cause, fix),
        ]
    mac = rif.mac
    # the reply goes back to the asker's MAC (bridges learned it from the request)
    back = l2.send(w, rif, l2.Frame(mac, oif.mac), [])
    if not any(r.key == oif.key for r, _t in back.reached):
        return None, best_trail + _reply_lost(w, oif, rns, rif, tip, mac, source, back)
    if sip is not None and rif.mac is not None and local_address(rns, tip, w.floods) is not None:
        # arp_process: a request for one of our addresses creates the sender's entry,
        # so the reply needs no ARP of its own
        w.neigh_learned[(rif.key, sip)] = oif.mac or ""
    return mac, [*best_trail, w.hop(rns, rif, "arp", f"{tip} is-at {mac} ({why})", source)]


def may_answer(
    rns: Namespace, rif: Interface, tip: str, memo: dict[object, Any] | None = None
) -> bool:
    """Could rif answer ARP for tip at all: tip local to rns, or proxying on rif?"""
    return (
        bool(conf(rns, rif, "proxy_arp"))
        or any(p.address == tip for p in rns.proxy_neighbours)
        or local_address(rns, tip, memo) is not None
    )


def resolve(
    w: Walker, ns: Namespace, oif: Interface, nexthop: str, sip: str | None
) -> tuple[str | None, list[Hop]]:
    """The MAC the packet is sent to, and the hops that decided it."""
    if oif.kind in ("loopback", "tun", "wireguard") or oif.mac is None:
        return None, [w.hop(ns, oif, "neigh", f"{oif.name} needs no neighbour", f"kind {oif.kind}")]
    entry = next(
        (n for n in ns.neighbours if n.ifindex == oif.key.ifindex and n.address == nexthop), None
    )
    learned = w.neigh_learned.get((oif.key, nexthop))
    if learned and (entry is None or entry.state not in STABLE):  # permanent entries stay
        src = f"neigh {nexthop} dev {oif.name} lladdr {learned} (from its ARP request)"
        return learned, [w.hop(ns, oif, "neigh", f"{nexthop} at {learned}", src)]
    asker = arp_source(w, ns, oif, nexthop, sip)
    if entry is not None and entry.state in STABLE and entry.lladdr:
        src = f"neigh {nexthop} dev {oif.name} lladdr {entry.lladdr} {entry.state}"
        saved = (set(w.l2_seen), {k: dict(v) for k, v in w.learned.items()})
        mac, _hops = arp(w, ns, oif, nexthop, asker)
        w.l2_seen, w.learned = saved
        if mac is not None and mac != entry.lladdr:
            # the kernel sends to the entry's MAC all the same: the walk goes on with
            # it (a bridge floods it, the receivers drop it as PACKET_OTHERHOST);
            # this hop stays the decision that lost the packet
            return entry.lladdr, [
                w.hop(
                    ns,
                    oif,
                    "neigh",
                    f"{nexthop} at {entry.lladdr} ({entry.state})",
                    src,
                    "fail",
                    f"the {entry.state.lower()} entry for {nexthop} holds {entry.lladdr}, but the "
                    f"interface owning {nexthop} has {mac}: frames go to the wrong MAC",
                    [
                        w.cmd(
                            ns,
                            f"ip neigh replace {nexthop} lladdr {mac} dev {oif.name} nud permanent",
                        )
                        if entry.state == "PERMANENT"
                        else w.cmd(ns, f"ip neigh del {nexthop} dev {oif.name}")
                    ],
                )
            ]
        return entry.lladdr, [w.hop(ns, oif, "neigh", f"{nexthop} at {entry.lladdr}", src)]
    hops: list[Hop] = []
    if entry is not None and entry.state in VALID and entry.lladdr:
        src = f"neigh {nexthop} dev {oif.name} lladdr {entry.lladdr} {entry.state}"
        hops.append(
            w.hop(
                ns,
                oif,
                "neigh",
                f"{nexthop} cached at {entry.lladdr} ({entry.state}); confirmed by ARP",
                src,
            )
        )
    elif entry is not None:
        hops.append(
            w.hop(
                ns,
                oif,
                "neigh",
                f"{nexthop} {entry.state}: resolves again",
                f"neigh {nexthop} dev {oif.name} {entry.state}",
            )
        )
    else:
        hops.append(
            w.hop(
                ns,
                oif,
                "neigh",
                f"no entry for {nexthop}: ARP",
                f"neigh {nexthop} dev {oif.name} (none)",
            )
        )
    mac, more = arp(w, ns, oif, nexthop, asker)
    return mac, hops + more


def arp_source(
    w: Walker, ns: Namespace, oif: Interface, target: str, sip: str | None
) -> str | None:
    """arp_solicit's sender address for a request for target out of oif, sent
    for a packet from sip: sip itself when it is local to ns (arp_announce 0,
    and values above 2) or also in a subnet of oif holding target (1); else
    (2, or a forwarded packet's foreign source) inet_select_addr(oif, target,
    RT_SCOPE_LINK)."""
    level = conf(ns, oif, "arp_announce")
    onlink = sip is not None and any(  # inet_addr_onlink: one subnet of oif holds both
        ip(target) in net(a.cidr) and ip(sip) in net(a.cidr) for a in oif.addresses if a.family == 4
    )
    if (
        sip is not None
        and level != 2
        and local_address(ns, sip, w.floods) is not None
        and (level != 1 or onlink)
    ):
        return sip
    return inet_select_addr(ns, oif, target, SCOPE_NUM["link"]) or sip


def _reply_lost(
    w: Walker,
    oif: Interface,
    rns: Namespace,
    rif: Interface,
    tip: str,
    mac: str | None,
    source: str,
    back: l2.L2Result,
) -> list[Hop]:
    """Why the ARP reply never reaches oif's stack: a bridge took it, or the L2 walk lost it."""
    lost = [w.hop(rns, rif, "arp", f"{tip} is-at {mac}, but the reply is lost", source)]
    taken = next((r for r, _t in back.reached), None)
    ons = w.ns_of(oif)
    master = ons.iface(oif.master) if oif.master is not None else None
    if taken is None or master is None:
        return lost + back.worst()
    addrs = [a.cidr for a in oif.addresses if a.family == 4]
    fix = [w.cmd(ons, f"ip addr del {c} dev {oif.name}") for c in addrs]
    fix += [w.cmd(ons, f"ip addr add {c} dev {master.name}") for c in addrs]
    cause = (
        f"{oif.name} is a port of {master.name}: the bridge's rx_handler hands frames for "
        f"{oif.name}'s MAC to {taken.name}'s stack, so {oif.name}'s neighbour entry for {tip} "
        "never resolves"
    )
    decision = f"the reply is taken up by {taken.name}, not {oif.name}"
    src = f"{oif.name} master {master.name}"
    return [*lost, w.hop(ons, oif, "arp", decision, src, "fail", cause, fix)]
