"""Our pcap-filter subset (collect/filter.py's tree) as nft match expressions,
so only the packets the user asked about carry nftrace.

An nft rule is a conjunction: `or` has no direct form. So the tree is put in
disjunctive normal form (negations pushed to the leaves, `and` distributed
over `or`) and each conjunct becomes one `... meta nftrace set 1` rule; a
packet that matches two of them is simply marked twice. Per family: an
`ip` table never sees ARP (`arp` is false there, `not arp` true), a `bridge`
table sees both and matches ARP's addresses for `host`/`net` as tcpdump does.
Negated leaves use nft's `!=`, which (unlike tcpdump's `not`) only matches
packets that have that header. Pure: strings in, strings out.
"""

from __future__ import annotations

from vethtrace.collect.filter import Filter, Node
from vethtrace.errors import UserError

MAX_RULES = 32  # a filter that expands beyond this is refused (say it smaller)

Dnf = list[list[str]]  # [] is false, [[]] is true
TRUE: Dnf = [[]]
FALSE: Dnf = []


def rules_for(flt: Filter, family: str) -> list[str]:
    """The match part of each marking rule for `family` (ip or bridge); an
    empty string is a rule that matches everything, no rules: nothing to trace."""
    out = []
    for conj in _dnf(flt.tree, False, family):
        text = " ".join(dict.fromkeys(conj))  # drop repeated matches, keep order
        if text not in out:
            out.append(text)
    if len(out) > MAX_RULES:
        raise UserError(
            f"filter {flt.text!r} needs {len(out)} nft rules to trace (at most {MAX_RULES}); "
            "write it with fewer or/not-and combinations"
        )
    return out


def _or(a: Dnf, b: Dnf) -> Dnf:
    return a + b


def _and(a: Dnf, b: Dnf) -> Dnf:
    return [x + y for x in a for y in b]


def _dnf(node: Node, neg: bool, family: str) -> Dnf:
    op, a = node.op, node.args
    if op == "true":
        return FALSE if neg else TRUE
    if op == "not":
        return _dnf(a[0], not neg, family)
    if op in ("and", "or"):
        left, right = _dnf(a[0], neg, family), _dnf(a[1], neg, family)
        # De Morgan: a negated and is an or of negations, and vice versa
        return _and(left, right) if (op == "and") != neg else _or(left, right)
    return _leaf(op, a, neg, family)


def _leaf(op: str, a: tuple, neg: bool, family: str) -> Dnf:
    eq = "!= " if neg else ""
    if op == "proto":
        proto = a[0]
        if proto == "arp":
            if family != "bridge":
                return TRUE if neg else FALSE
            return [[f"ether type {eq}arp"]]
        if proto == "ip":
            if family != "bridge":
                return FALSE if neg else TRUE
            return [[f"ether type {eq}ip"]]
        return [[f"ip protocol {eq}{proto}"]]
    direction = a[0]
    if op == "port":
        port = a[1]
        fields = ["sport", "dport"] if direction is None else [direction[0] + "port"]
        l4 = "meta l4proto { tcp, udp }"
        alts = [[l4, f"th {f} {eq}{port}"] for f in fields]
        return _combine(alts, neg)
    value = a[1] if op == "host" else f"{a[1]}/{a[2]}"
    fields = ["saddr", "daddr"] if direction is None else [direction + "addr"]
    alts = [[f"ip {f} {eq}{value}"] for f in fields]
    if family == "bridge":  # tcpdump's host/net match ARP's addresses too
        alts += [[f"arp {f} ip {eq}{value}"] for f in fields]
        if neg:  # not host A: neither IP nor ARP header names it (per header kind)
            ip_part = _and_all([x for x in alts if x[0].startswith("ip ")])
            arp_part = _and_all([x for x in alts if x[0].startswith("arp ")])
            return _or(ip_part, arp_part)
    return _combine(alts, neg)


def _and_all(alts: Dnf) -> Dnf:
    out: Dnf = TRUE
    for alt in alts:
        out = _and(out, [alt])
    return out


def _combine(alts: Dnf, neg: bool) -> Dnf:
    """A leaf that means `x or y`: negated it is `not x and not y` (the
    alternatives already carry `!=`), one conjunct."""
    if not neg:
        return alts
    return [[m for alt in alts for m in alt if "!=" in m or "l4proto" in m]]
