"""Rules about why a bridge would not forward between its ports: port STP
state, port isolation, and netfilter on the bridged path (br_netfilter)."""

from __future__ import annotations

import shlex
from collections.abc import Iterator

from vethtrace.diagnose.rules.base import (
    Context,
    Where,
    bridge_cmd,
    finding,
    ip,
    join_names,
    ns_prefix,
    rule,
    sysctl_w,
)
from vethtrace.diagnose.rules.containers import runtime_firewall
from vethtrace.diagnose.rules.netfilter import ForwardChain, forward_chains
from vethtrace.model import Finding, Severity

# The numeric states `bridge link set ... state N` takes.
STATE_NUMBER = {"disabled": 0, "listening": 1, "learning": 2, "forwarding": 3, "blocking": 4}


def _live_ports(ctx: Context, br: Where) -> list[Where]:
    return [Where(br.ns, p) for p in ctx.ports(br.ns, br.iface) if p.admin_up and p.carrier]


def _bridges(ctx: Context) -> Iterator[Where]:
    for w in ctx.interfaces():
        if w.iface.kind == "bridge" and w.iface.admin_up:
            yield w


def _loops(ctx: Context, br: Where) -> bool:
    """Can frames leave br through one port and come back through another?
    (a veth pair with both ends on br, or two links to the same other bridge)"""
    seen: set[object] = set()
    for port in ctx.ports(br.ns, br.iface):
        peer = ctx.where(port.peer) if port.kind == "veth" else None
        if peer is None:
            continue
        far = ctx.master(peer.ns, peer.iface)
        target = far.key if far is not None else peer.iface.key
        if target == br.iface.key or target in seen:
            return True
        seen.add(target)
    return False


@rule("bridge-port-not-forwarding", "a live bridge port is not forwarding (STP state)")
def bridge_port_not_forwarding(ctx: Context) -> Iterator[Finding]:
    for br in _bridges(ctx):
        b = br.iface.name
        stuck = [p for p in _live_ports(ctx, br)
                 if p.iface.bridge_port is not None
                 and p.iface.bridge_port.state != "forwarding"]
        if not stuck:
            continue
        loops = _loops(ctx, br) or any(p.iface.bridge_port.state == "blocking"  # type: ignore[union-attr]
                                        for p in stuck)
        for port in stuck:
            p, state = port.iface.name, port.iface.bridge_port.state  # type: ignore[union-attr]
            head = f"port {p} of {b} in {br.ns.name} is {state}, not forwarding"
            if not br.iface.bridge_stp:
                yield finding(
                    "bridge-port-not-forwarding", "warning", port, head + " (STP is off)",
                    f"br_handle_frame drops whatever {p} receives while it is {state} (drop "
                    f"reason BRIDGE_INGRESS_STP_STATE) and {b} sends nothing out of it, so "
                    f"everything behind {p} is cut off. With STP off nothing in the kernel set "
                    f"this state: a user-space STP daemon or a script did.",
                    [bridge_cmd(br.ns, "link", "set", "dev", p, "state",
                                STATE_NUMBER["forwarding"])],
                )
            elif loops:
                yield finding(
                    "bridge-port-not-forwarding", "info", port, head + " (STP, loop)",
                    f"{b} has a loop (two of its ports lead to the same place), so STP keeps "
                    f"ports out of forwarding until it has chosen one path; a blocking port "
                    f"drops every frame it receives. That is STP doing its job; traffic takes "
                    f"the other path.",
                )
            else:
                yield finding(
                    "bridge-port-not-forwarding", "warning", port, head + " (STP)",
                    f"With STP on, the kernel holds every new port in listening and then "
                    f"learning for the forward delay (15 s by default) each, dropping what it "
                    f"receives (BRIDGE_INGRESS_STP_STATE): everything behind {p} is cut off for "
                    f"up to 30 s after it comes up. Nothing on {b} can loop, so STP buys "
                    f"nothing here: turn it off, then put the ports that are still waiting into "
                    f"forwarding (turning STP off does not move them).",
                    [ip(br.ns, "link", "set", b, "type", "bridge", "stp_state", 0),
                     bridge_cmd(br.ns, "link", "set", "dev", p, "state",
                                STATE_NUMBER["forwarding"])],
                )


@rule("isolated-ports", "two or more isolated ports of one bridge cannot reach each other")
def isolated_ports(ctx: Context) -> Iterator[Finding]:
    for br in _bridges(ctx):
        isolated = [p for p in _live_ports(ctx, br)
                    if p.iface.bridge_port is not None and p.iface.bridge_port.isolated]
        if len(isolated) < 2:
            continue
        b = br.iface.name
        for port in isolated:
            others = join_names(o.iface.name for o in isolated if o is not port)
            yield finding(
                "isolated-ports", "warning", port,
                f"{port.iface.name} and {others} are isolated ports of {b} in {br.ns.name}",
                f"{b} never forwards a frame from one isolated port to another (only to and from "
                f"non-isolated ports and {b} itself), so whatever sits behind {port.iface.name} "
                f"cannot reach {others}, ARP included. Turn isolation off where those ends "
                f"should talk.",
                [bridge_cmd(br.ns, "link", "set", "dev", port.iface.name, "isolated", "off")],
            )


BRIDGE_NF_KEYS = {
    "ip": ["net.bridge.bridge-nf-call-iptables"],
    "ip6": ["net.bridge.bridge-nf-call-ip6tables"],
    "inet": ["net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"],
}


@rule("bridge-netfilter-drop",
      "bridged traffic goes through a firewall forward path that drops (br_netfilter / nft bridge)")
def bridge_netfilter_drop(ctx: Context) -> Iterator[Finding]:
    for ns in ctx.topo.namespaces:
        chains = [c for c in forward_chains(ns.firewall) if c.drops_anything]
        legacy = "filter" in (ns.firewall.get("iptables_legacy") or [])
        if not chains and not legacy:
            continue
        for br in _bridges(ctx):
            if br.ns is not ns or len(ctx.ports(ns, br.iface)) < 2:
                continue
            for chain in chains:
                yield from _chain_finding(ctx, br, chain)
            if legacy and (ctx.sysctl(ns, BRIDGE_NF_KEYS["ip"][0]) or "").strip() == "1":
                b = br.iface.name
                yield finding(
                    "bridge-netfilter-drop", "info", br,
                    f"{b} in {ns.name} passes bridged traffic through legacy iptables FORWARD",
                    f"bridge-nf-call-iptables=1 and the legacy (x_tables) filter table is loaded: "
                    f"its FORWARD rules apply to frames {b} forwards between its ports. vethtrace "
                    f"cannot read legacy rules; check them with `iptables-legacy -L FORWARD -v`.",
                )


def _deliberate(chain: ForwardChain, mentioned: set[str]) -> bool:
    """A drop policy with accept/jump exceptions (Docker, firewalld), or one that
    names the bridge or its ports, is a firewall written for bridged traffic too."""
    return bool(mentioned) or (chain.drop_count == 0 and chain.other_rules > 0)


def bridged_by_design(ctx: Context, br: Where) -> bool:
    """Is the ip/inet forward firewall br_netfilter hands br's frames to meant for
    them (a runtime's isolation, or _deliberate)? Then a drop there is the
    firewall's own decision (netfilter-forward-drop, fixed by an accept rule), not
    br_netfilter catching traffic by accident (bridge-netfilter-drop)."""
    ns = br.ns
    if runtime_firewall(ns):
        return True
    names = {br.iface.name} | {p.name for p in ctx.ports(ns, br.iface)}
    return any(
        _deliberate(c, c.accepted_ifnames & names)
        for c in forward_chains(ns.firewall)
        if c.family != "bridge" and c.drops_anything
    )


def _chain_finding(ctx: Context, br: Where, chain: ForwardChain) -> Iterator[Finding]:
    ns, b = br.ns, br.iface.name
    what = chain.describe()
    where = f"{chain.family} {chain.table} {chain.name}"
    ports = ctx.ports(ns, br.iface)
    port_names = join_names(p.name for p in ports)
    mentioned = chain.accepted_ifnames & ({b} | {p.name for p in ports})
    deliberate = _deliberate(chain, mentioned)
    severity: Severity = "info" if deliberate else "warning"
    if chain.family == "bridge":
        nft = shlex.join(ns_prefix(ns, "nft"))  # "ip netns exec NS nft"
        ref = f"bridge {shlex.quote(chain.table)} {shlex.quote(chain.name)}"
        if chain.drops and all(d.handle is not None for d in chain.drops):
            fix = [f"{nft} delete rule {ref} handle {d.handle}" for d in chain.drops]
        elif chain.drop_count:
            fix = [f"{nft} flush chain {ref}"]
        else:
            fix = []
        if chain.policy_drop:
            fix.append(f"{nft} {shlex.quote(f'chain {ref} {{ policy accept; }}')}")
        yield finding(
            "bridge-netfilter-drop", severity, br,
            f"nftables chain {where} in {ns.name} drops frames {b} forwards ({what})",
            f"A bridge-family forward chain sees every frame {b} forwards between its ports "
            f"before it leaves; its drops (reason NETFILTER_DROP) cut traffic between "
            f"{port_names}. Review the chain (nft -a list chain {ref}) before removing rules.",
            fix,
        )
        return
    keys = BRIDGE_NF_KEYS.get(chain.family, [])
    on = [k for k in keys if (ctx.sysctl(ns, k) or "").strip() == "1"]
    if not on or runtime_firewall(ns):
        return  # a container runtime's isolation, on purpose: rules/containers.py
    tail = (f" (the ruleset names {join_names(sorted(mentioned))}, so it may be)." if mentioned
            else " (its accept/jump rules may already let it through)." if deliberate else ".")
    if deliberate:
        # Docker's and firewalld's chains rely on br_netfilter for isolation: never
        # suggest switching it off; the path rules name a rule that really drops
        yield finding(
            "bridge-netfilter-drop", "info", br,
            f"{b} in {ns.name} passes bridged traffic through {where} ({what}), a firewall "
            f"with exceptions",
            f"With {on[0].split('.')[-1]}=1, br_netfilter hands frames {b} forwards to the "
            f"{chain.family} FORWARD hook; the chain's accept/jump rules decide what passes"
            f"{tail} Paths it drops are reported by the path checks.",
        )
        return
    yield finding(
        "bridge-netfilter-drop", severity, br,
        f"{b} in {ns.name} passes bridged traffic through {where}, which drops ({what})",
        f"With {on[0].split('.')[-1]}=1, br_netfilter hands every frame {b} forwards between its "
        f"ports to the {chain.family} FORWARD hook as if it were routed, so the {chain.name} "
        f"chain's drops apply to traffic between {port_names} too (the kernel frees it with "
        f"reason NETFILTER_DROP, blamed on the egress port). Turn that off unless the rules "
        f"are meant for bridged traffic{tail}",
        [sysctl_w(ns, k, 0) for k in on],
    )
