"""Netfilter for the walk: a namespace's ruleset run at one hook for the
packet as it is there (nft.py evaluates; this applies the verdict, rewrites
the packet for NAT, names the fix for a dropping rule), br_netfilter's pass of
bridged IP through the ip forward hook, and the conntrack questions (is this
packet the reply of a flow the walk already saw here?). Out of walk.py so the
engine reads as the kernel's path and this as its hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vethtrace.diagnose.path.flow import Hop, Packet
from vethtrace.diagnose.path.nft import FAMILIES, Ctx, HookResult, Ruleset, evaluate
from vethtrace.diagnose.path.route import RouteResult, ip, lookup, select_source
from vethtrace.model import Interface, Namespace

if TYPE_CHECKING:
    from vethtrace.diagnose.path.walk import Walker


def ruleset(w: Walker, ns: Namespace) -> Ruleset | None:
    if ns.inode not in w.rulesets:
        w.rulesets[ns.inode] = Ruleset.parse(ns.nft) if ns.nft else None
    return w.rulesets[ns.inode]


def run_hook(
    w: Walker,
    ns: Namespace,
    kind: str,
    hook: str,
    pkt: Packet,
    iif: str | None,
    oif: str | None,
    bridged: bool = False,
) -> tuple[str, list[Hop]]:
    """Run the hook's base chains; NAT rewrites pkt. ("accept"|"drop", hops)."""
    rs = ruleset(w, ns)
    if rs is None:
        why = ns.nft_error or (
            "the snapshot lists nftables chains but not the ruleset (taken before "
            "vethtrace recorded rulesets)" if ns.nft is None and ns.firewall.get("chains")
            else None)
        if why and ns.inode not in w.unreadable:
            # the chains exist but their rules are unknown: say so, never guess
            w.unreadable.add(ns.inode)
            return "accept", [
                w.hop(
                    ns,
                    ns.iface_by_name(iif or oif or ""),
                    "nft",
                    f"{hook}: ruleset not readable, taken as accepting",
                    "nft list ruleset",
                    "unknown",
                    f"{ns.name}'s ruleset is unknown: {why}",
                )
            ]
        return "accept", []
    fam = 4 if ip(pkt.dst).version == 4 else 6
    families = ("bridge",) if kind == "bridge" else FAMILIES[fam]
    if not rs.base(families, hook):
        return "accept", []
    ctx = Ctx(
        fam,
        pkt.src or "0.0.0.0",
        pkt.dst,
        pkt.proto,
        pkt.sport,
        pkt.dport,
        iif,
        oif,
        "established" if pkt.reply and tracked(w, ns, pkt) else "new",
        pkt.reply,
        ("echo-reply" if pkt.reply else "echo-request") if pkt.proto == "icmp" else None,
        bridged,
        lambda addr: _addrtype(ns, addr),
    )
    res: HookResult = evaluate(
        rs, families, hook, ctx, lambda nat: _fields(translated(ns, pkt, nat, iif, oif))
    )
    hops = []
    iface = ns.iface_by_name(iif or oif or "")
    for st in res.steps:
        hops.append(
            w.hop(
                ns,
                iface,
                "nft",
                f"{hook}: {st.decision}" + (f"  [{st.rule}]" if st.rule else ""),
                st.source,
                st.status,
                ""
                if st.status == "ok"
                else (
                    f"{st.source} drops it: {st.rule or 'the chain policy'}"
                    if st.status == "fail"
                    else f"the model cannot evaluate {st.rule}"
                ),
                _fix(w, ns, st.source, pkt, iif, oif) if st.status == "fail" else [],
            )
        )
    if res.verdict == "drop":
        if not any(h.status == "fail" for h in hops):
            hops.append(
                w.hop(ns, iface, "nft", f"{hook}: dropped", "nft", "fail", "a rule drops it")
            )
        return "drop", hops
    if res.nat is not None:
        before = pkt.describe()
        after = translated(ns, pkt, res.nat, iif, oif)
        pkt.src, pkt.dst, pkt.sport, pkt.dport = after.src, after.dst, after.sport, after.dport
        hops.append(
            w.hop(
                ns,
                iface,
                "nat",
                f"{hook}: {res.nat[0]}: {before} -> {pkt.describe()}",
                next((s.source for s in reversed(res.steps)), "nft"),
            )
        )
    return "accept", hops


def translated(
    ns: Namespace,
    pkt: Packet,
    nat: tuple[str, str | None, int | None],
    iif: str | None,
    oif: str | None,
) -> Packet:
    """pkt as a NAT binding (kind, address, port) rewrites it: masquerade takes
    the egress device's address for the destination (nf_nat_masquerade_ipv4),
    redirect the ingress device's first address or 127.0.0.1."""
    kind, addr, port = nat
    out = pkt.copy()
    if kind in ("masquerade", "snat"):
        dev = ns.iface_by_name(oif or "")
        out.src = addr or (
            select_source(ns, RouteResult("unicast", None, dev), pkt.dst) if dev else None
        )
        if port is not None:
            out.sport = port
    elif kind in ("dnat", "redirect"):
        if kind == "redirect":
            inn = ns.iface_by_name(iif or "")
            addr = next(
                (a.address for a in (inn.addresses if inn else []) if a.family == 4),
                "127.0.0.1",
            )
        if addr:
            out.dst = addr
        if port is not None:
            out.dport = port
    return out


def _fields(p: Packet) -> tuple[str | None, str, int | None, int | None]:
    return p.src, p.dst, p.sport, p.dport


def _fix(
    w: Walker, ns: Namespace, source: str, pkt: Packet, iif: str | None, oif: str | None
) -> list[str]:
    parts = source.split()
    if len(parts) >= 6 and parts[4] == "handle":
        _nft, fam, table, chain, _h, handle = parts[:6]
        return [w.cmd(ns, f"nft delete rule {fam} {table} {chain} handle {handle}")]
    if len(parts) >= 4:
        _nft, fam, table, chain = parts[:4]
        match = f"ip saddr {pkt.src} ip daddr {pkt.dst}" if fam != "bridge" else ""
        if iif and oif and "forward" in chain.lower():
            # a forward policy that drops: let what comes in on iif out of oif
            # (Docker's `-i docker0 -o up0 -j ACCEPT`), not one address pair, and
            # the replies of those flows back (the same policy drops them too)
            ref = f"nft insert rule {fam} {table} {chain}"
            fix = [w.cmd(ns, f"{ref} iifname {iif} oifname {oif} accept")]
            if iif != oif and not pkt.reply:
                fix.append(w.cmd(
                    ns, f"{ref} iifname {oif} oifname {iif} ct state established,related accept"
                ))
            return fix
        if (
            (iif and chain.upper() in ("FORWARD", "INPUT"))
            or "forward" in chain
            or "input" in chain
        ):
            match = (f"iifname {iif} " if iif else "") + (f"oifname {oif} " if oif else "") + match
        return [w.cmd(ns, f"nft insert rule {fam} {table} {chain} {match.strip()} accept")]
    return []


def br_netfilter(w: Walker, ns: Namespace, br: Interface, pkt: Packet) -> tuple[str, list[Hop]]:
    """A bridged IPv4 packet through the ip hooks br_netfilter hands it to:
    prerouting (br_nf_pre_routing, in: the bridge), forward (br_nf_forward_ip,
    in and out: the bridge) and postrouting (br_nf_post_routing, out: the
    bridge). NAT there is not modelled: br_nf_pre_routing_finish routes a
    DNATed frame instead of bridging it, and the bridged reply would need
    conntrack's undoing; such a rewrite ends in an unknown hop."""
    if ns.sysctls.get("net.bridge.bridge-nf-call-iptables") != "1":
        return "accept", []
    entered = pkt.copy()
    hops: list[Hop] = []
    verdict = "accept"
    for hook, iif, oif in (
        ("prerouting", br.name, None),
        ("forward", br.name, br.name),
        ("postrouting", None, br.name),
    ):
        verdict, more = run_hook(w, ns, "ip", hook, pkt, iif, oif, bridged=True)
        for h in more:
            h.decision = f"br_netfilter {h.decision}"
        hops += more
        if verdict != "accept":
            break
        if (pkt.src, pkt.dst, pkt.sport, pkt.dport) != _fields(entered):
            verdict = "unknown"
            hops.append(
                w.hop(
                    ns,
                    br,
                    "nat",
                    f"br_netfilter {hook}: NAT of a bridged packet",
                    "sysctl net.bridge.bridge-nf-call-iptables=1",
                    "unknown",
                    "NAT on a bridged packet (br_nf_pre_routing_finish may route it "
                    "instead of bridging it) is not modelled",
                )
            )
            break
    if verdict == "accept":
        # conntrack follows bridged flows too: the reply is ESTABLISHED there
        w.track(ns, entered, pkt)
    if hops:
        src = "sysctl net.bridge.bridge-nf-call-iptables=1"
        hops.insert(
            0, w.hop(ns, br, "bridge", "bridged IP passes the ip hooks (br_netfilter)", src)
        )
    return verdict, hops


def bridge_hook(
    w: Walker,
    ns: Namespace,
    hook: str,
    pkt: Packet | None,
    iif: str | None,
    oif: str | None,
    trail: list[Hop],
) -> tuple[list[Hop], bool]:
    """The bridge family's chains at one bridge hook for an IP frame (ARP
    frames are not evaluated): (the trail with their hops, accepted?)."""
    if pkt is None:
        return trail, True
    verdict, hops = run_hook(w, ns, "bridge", hook, pkt, iif, oif)
    return trail + hops, verdict == "accept"


def tracked(w: Walker, ns: Namespace, pkt: Packet) -> bool:
    """A reply of a flow conntrack saw here: as it left (before the reply is
    un-NATed) or as it entered (after)."""
    return any(reply_of(out, pkt) or reply_of(first, pkt) for first, out in w.ct.get(ns.inode, []))


def reply_of(out: Packet, pkt: Packet) -> bool:
    return (
        pkt.src == out.dst
        and pkt.dst == out.src
        and pkt.proto == out.proto
        and pkt.sport == out.dport
        and pkt.dport == out.sport
    )


def _addrtype(ns: Namespace, addr: str) -> str:
    """addrtype's answer: the type the namespace's local table gives the address."""
    try:
        kind = lookup(ns, addr).kind
    except ValueError:
        return "UNICAST"
    return {"local": "LOCAL", "broadcast": "BROADCAST"}.get(kind, "UNICAST")
