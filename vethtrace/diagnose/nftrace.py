"""Judge nftables trace events: which rule ended a packet, and the fix that
names it.

The kernel's trace says, per packet and hook, every rule that matched and
its verdict; the one that matters for "where did it go" is the first `drop`
(a rule's, or a chain's policy) of a packet of the flow. A `reject` rule
reports verdict drop too: the rule's text tells them apart.

The fix: we suggest inserting an accept for exactly this flow just before
the rule (nft `insert ... position HANDLE`, or `iptables -I CHAIN N` for a
rule iptables made), because a drop rule usually exists for other traffic
and deleting it would open that too; `nft delete rule ... handle N` is given
as the alternative for a rule that should not be there at all. For a
policy drop, the accept goes at the end of the base chain (just before the
policy applies). Pure: events in, dicts and strings out (report re-judges
recordings with it).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from typing import Any

from vethtrace.model import NftraceEvent, PacketSummary, Topology, Verdict


def is_drop(ev: NftraceEvent) -> bool:
    return ev.verdict == "drop"


def verdict_word(ev: NftraceEvent) -> str:
    """accept/drop/reject/continue/jump/goto/return/policy drop..."""
    if ev.kind == "policy":
        return f"policy {ev.verdict}"
    if ev.verdict == "drop" and ev.rule and ev.rule.split()[-1:] == ["reject"]:
        return "reject"
    if ev.verdict == "drop" and ev.rule and " reject" in f" {ev.rule}":
        return "reject"
    if ev.kind == "return":
        return "return (end of chain)"
    if ev.verdict in ("jump", "goto") and ev.target:
        return f"{ev.verdict} {ev.target}"
    return ev.verdict


def rule_id(ev: NftraceEvent) -> str:
    """`inet filter input handle 4` (or `... policy drop`): the rule's identity."""
    where = f"{ev.family} {ev.table} {ev.chain}"
    if ev.kind == "policy":
        return f"{where} policy"
    return where if ev.handle is None else f"{where} handle {ev.handle}"


def ours(ev: NftraceEvent, ip: str) -> bool:
    """An event about the ping's traffic: IP or ARP naming the address."""
    p = ev.packet
    if p is None:
        return False
    return ip in (p.ip_src, p.ip_dst, p.arp_spa, p.arp_tpa)


def first_drop(events: Iterable[NftraceEvent], ip: str) -> NftraceEvent | None:
    for ev in sorted(events, key=lambda e: e.ts_ns):
        if is_drop(ev) and ours(ev, ip):
            return ev
    return None


def exec_prefix(topo: Topology | None, inode: int) -> str:
    """How a command is run in that namespace: `ip netns exec NAME `, nothing
    for the initial one, nsenter for a process-held one."""
    ns = topo.netns(inode) if topo is not None else None
    if ns is None or ns.name == "root":
        return ""
    if ns.named:
        return f"ip netns exec {shlex.quote(ns.name)} "
    if ns.pids:
        return f"nsenter -t {ns.pids[0]} -n "
    return ""


def flow_match(p: PacketSummary | None, family: str) -> str:
    """nft matches for this packet's flow (addresses, protocol, port)."""
    if p is None:
        return ""
    if p.arp_op is not None and family == "bridge":
        return f"arp saddr ip {p.arp_spa} arp daddr ip {p.arp_tpa}"
    parts = []
    if p.ip_src:
        parts.append(f"ip saddr {p.ip_src} ip daddr {p.ip_dst}")
    proto = {1: "icmp", 6: "tcp", 17: "udp"}.get(p.ip_proto or -1)
    if proto:
        parts.append(f"ip protocol {proto}")
        if proto in ("tcp", "udp") and p.dport is not None:
            parts.append(f"{proto} dport {p.dport}")
    return " ".join(parts)


def _iptables_match(p: PacketSummary | None) -> str:
    if p is None or not p.ip_src:
        return ""
    proto = {1: "icmp", 6: "tcp", 17: "udp"}.get(p.ip_proto or -1)
    out = f"-s {p.ip_src}/32 -d {p.ip_dst}/32"
    if proto:
        out += f" -p {proto}"
        if proto != "icmp" and p.dport is not None:
            out += f" --dport {p.dport}"
    return out


def fix(ev: NftraceEvent, topo: Topology | None) -> list[str]:
    """Commands that let this flow through the rule or policy that dropped it:
    the narrow accept first (recommended), then the broad alternative. An
    iptables rule gets its accept at the top of its chain (`-I CHAIN`:
    before the rule, whatever its position)."""
    pre = exec_prefix(topo, ev.netns)
    where = f"{ev.family} {ev.table} {ev.chain}"
    match = flow_match(ev.packet, ev.family)
    out: list[str] = []
    if ev.iptables:
        tool = "iptables" if ev.family == "ip" else "ip6tables"
        table = "" if ev.table == "filter" else f"-t {ev.table} "
        out.append(f"{pre}{tool} {table}-I {ev.chain} {_iptables_match(ev.packet)} -j ACCEPT")
        if ev.kind == "policy":
            out.append(f"# or let everything through: {pre}{tool} {table}-P {ev.chain} ACCEPT")
        else:
            undo = ev.iptables.replace("-A", "-D", 1)
            out.append(f"# or remove the rule: {pre}{tool} {table}{undo}")
        return out
    if ev.kind == "policy":
        out.append(f"{pre}nft add rule {where} {match} accept")
        out.append(f"# or let everything through: {pre}nft chain {where} '{{ policy accept; }}'")
        return out
    out.append(f"{pre}nft insert rule {where} position {ev.handle} {match} accept")
    out.append(f"# or remove the rule: {pre}nft delete rule {where} handle {ev.handle}")
    return out


def culprit(
    events: Iterable[NftraceEvent], ip: str, topo: Topology | None, names: dict[int, str]
) -> dict[str, Any] | None:
    """The rule that dropped the ping's traffic, as the culprit: namespace,
    family, table, chain, handle, text, iptables form, hook, fix."""
    ev = first_drop(events, ip)
    if ev is None:
        return None
    return {
        "netns": names.get(ev.netns, f"netns:{ev.netns}"),
        "family": ev.family,
        "table": ev.table,
        "chain": ev.chain,
        "handle": ev.handle,
        "kind": ev.kind,
        "verdict": verdict_word(ev),
        "rule": ev.rule,
        "iptables": ev.iptables,
        "hook": ev.hook,
        "iif": ev.iif,
        "oif": ev.oif,
        "packet": ev.packet.describe() if ev.packet else None,
        "confirmed": True,
        "fix": fix(ev, topo),
    }


def apply(verdict: Verdict, c: dict[str, Any]) -> None:
    """Make the rule the verdict's culprit: the summary and explanation name
    it and its fix replaces the generic "find the rule" advice (`nft list
    ruleset`). A container runtime's rule keeps no fix that would undo its
    isolation: then only the rule is named."""
    what = "policy" if c["kind"] == "policy" else f"handle {c['handle']}"
    ident = f"{c['family']} {c['table']} {c['chain']} {what}"
    verdict.summary += f"; the kernel's nftables trace names the rule: {c['netns']} {ident}"
    words = f"{c['verdict']} by {ident} in {c['netns']}"
    if c.get("hook"):
        words += f" at hook {c['hook']}"
    if c.get("rule") and c["kind"] != "policy":
        words += f" (`{c['rule']}`)"
    if c.get("iptables"):
        words += f", made by iptables: `{c['iptables']}`"
    runtime = "runtime" in verdict.summary or "isolation" in verdict.summary
    advice = (
        "It belongs to a container runtime's isolation: no fix undoes it here."
        if runtime
        else "The fix lets exactly this flow through before that rule (a drop rule usually "
        "exists for other traffic); the commented line is the broad alternative."
    )
    verdict.explanation = (verdict.explanation + " " if verdict.explanation else "") + (
        f"The kernel's nftables trace (--nftrace) shows it: {words}. {advice}"
    )
    generic = [f for f in verdict.fix if "nft list ruleset" in f]
    kept = [f for f in verdict.fix if f not in generic]
    verdict.fix = kept if runtime else list(c["fix"]) + kept
