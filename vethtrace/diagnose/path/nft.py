"""Evaluate a namespace's nftables ruleset (nftables' own JSON, which holds
iptables-nft rules too) for one packet at one hook.

Base chains of the hook run in priority order; accept ends a chain, drop or
reject ends the packet; jump/goto/return follow the chain stack; policies
apply at the end of a base chain. nat chains see only a flow's first packet
(conntrack answers later ones), so replies skip them; masquerade/snat/dnat/
redirect rewrite the packet. Anonymous and named sets, maps and verdict maps
are looked up. iptables-nft's xt matches are judged from the arguments
iptables-nft-save printed for them (xt.py). Anything not understood (fib, a
concatenation, an xt match we do not know…)
is *unknown*: the hop shows the rule and says so, and evaluation goes on as
if that rule did not match, so the prediction is marked uncertain instead of
guessing silently.

Over 400 lines: the expression evaluator (payload, meta, ct, sets, maps,
verdicts, NAT statements) is one recursive walk; split, each half would need
the other's dispatch.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from vethtrace.diagnose.path import xt
from vethtrace.diagnose.path.route import ip, net

PROTO_NUM = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}
FAMILIES = {4: ("ip", "inet"), 6: ("ip6", "inet")}
VERDICTS = ("accept", "drop", "reject", "return", "continue", "jump", "goto", "queue")
NOOPS = ("counter", "log", "limit", "comment", "notrack")


class Unknown(Exception):
    """An expression the model does not understand."""


@dataclass
class Chain:
    family: str
    table: str
    name: str
    hook: str | None = None
    type: str = "filter"
    prio: int = 0
    policy: str = "accept"
    rules: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Ruleset:
    chains: dict[tuple[str, str, str], Chain] = field(default_factory=dict)
    sets: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def parse(cls, items: list[dict[str, Any]]) -> Ruleset:
        rs = cls()
        for item in items:
            if "chain" in item:
                c = item["chain"]
                rs.chains[(c["family"], c["table"], c["name"])] = Chain(
                    c["family"],
                    c["table"],
                    c["name"],
                    c.get("hook"),
                    c.get("type", "filter"),
                    int(c.get("prio", 0)),
                    c.get("policy", "accept"),
                )
            elif "set" in item or "map" in item:
                s = item.get("set") or item["map"]
                rs.sets[(s["family"], s["table"], s["name"])] = s
            elif "rule" in item:
                r = item["rule"]
                chain = rs.chains.get((r["family"], r["table"], r["chain"]))
                if chain is not None:
                    chain.rules.append(r)
        return rs

    def base(self, families: tuple[str, ...], hook: str) -> list[Chain]:
        found = [c for c in self.chains.values() if c.hook == hook and c.family in families]
        return sorted(found, key=lambda c: c.prio)


@dataclass
class Ctx:
    """What the rules can ask about the packet at this hook."""

    family: int
    src: str
    dst: str
    proto: str
    sport: int | None
    dport: int | None
    iif: str | None
    oif: str | None
    ct_state: str  # new | established | invalid (no conntrack entry yet)
    reply: bool
    icmp_type: str | None = None
    bridged: bool = False  # seen by br_netfilter (physdev's question)
    # LOCAL/BROADCAST/UNICAST of an address in this namespace (addrtype's question)
    addrtype: Callable[[str], str] | None = None


@dataclass
class Step:
    status: str  # ok | fail | unknown
    decision: str
    source: str  # "nft ip filter FORWARD handle 4" or "... policy drop"
    rule: str = ""


@dataclass
class HookResult:
    verdict: str = "accept"  # accept | drop
    steps: list[Step] = field(default_factory=list)
    nat: tuple[str, str | None, int | None] | None = None  # (kind, address, port)


# The NAT core's own hook priorities (nf_nat_ipv4_ops/nf_nat_ipv6_ops): the
# ip/ip6/inet nat chains of a hook run there, in their own priority order
# (nf_nat_register_fn), whatever priority they declare.
NAT_CORE = {"prerouting": -100, "output": -100, "input": 100, "postrouting": 100}
CONNTRACK_PRIO = -200  # NF_IP_PRI_CONNTRACK / NF_IP6_PRI_CONNTRACK
CT_BEFORE = ("prerouting", "output")  # the hooks where conntrack looks a packet up
Translate = Callable[
    [tuple[str, str | None, int | None]], tuple[str | None, str, int | None, int | None]
]


def ordered(rs: Ruleset, families: tuple[str, ...], hook: str) -> list[Chain]:
    """The hook's base chains in the order the kernel runs them."""

    def at(c: Chain) -> tuple[int, int]:
        core = c.type == "nat" and c.family != "bridge" and hook in NAT_CORE
        return (NAT_CORE[hook] if core else c.prio, c.prio)

    return sorted(rs.base(families, hook), key=at)


def evaluate(
    rs: Ruleset,
    families: tuple[str, ...],
    hook: str,
    ctx: Ctx,
    translate: Translate | None = None,
) -> HookResult:
    """The hook's verdict for the packet. nf_nat_inet_fn runs the nat chains
    only for a new flow and only until one binds it; the chains after see the
    packet rewritten (`translate` says how: (src, dst, sport, dport))."""
    res = HookResult()
    for chain in ordered(rs, families, hook):
        if chain.type == "nat" and (ctx.ct_state != "new" or res.nat is not None):
            continue
        here = ctx
        if hook in CT_BEFORE and chain.prio < CONNTRACK_PRIO and chain.family != "bridge":
            # conntrack attaches at -200 (nf_conntrack_in): before it, nft_ct_get
            # sees no entry: `ct state` is invalid, other ct keys do not match
            here = replace(ctx, ct_state="invalid")
        verdict = _run_chain(rs, chain, here, res, depth=0)
        if chain.type == "nat" and res.nat is not None and translate is not None:
            src, dst, sport, dport = translate(res.nat)
            ctx = replace(ctx, src=src or ctx.src, dst=dst, sport=sport, dport=dport)
        where = f"nft {chain.family} {chain.table} {chain.name}"
        if verdict is None:  # fell off the end (or returned): the policy decides
            verdict = chain.policy
            if verdict == "drop":
                res.steps.append(Step("fail", f"{chain.name} policy drop", f"{where} policy drop"))
        if verdict in ("drop", "reject"):
            res.verdict = "drop"
            return res
    return res


def _run_chain(rs: Ruleset, chain: Chain, ctx: Ctx, res: HookResult, depth: int) -> str | None:
    """The chain's verdict: accept/drop/reject, or None (return / end of chain)."""
    if depth > 16:
        raise Unknown("jump depth over 16")
    for rule in chain.rules:
        where = f"nft {chain.family} {chain.table} {chain.name} handle {rule.get('handle')}"
        try:
            outcome = _run_rule(rs, chain, rule, ctx, res)
        except Unknown as exc:
            res.steps.append(
                Step(
                    "unknown",
                    f"cannot evaluate ({exc}); taken as not matching",
                    where,
                    rule_text(rule),
                )
            )
            continue
        if outcome is None:
            continue
        kind, target = outcome
        if kind in ("jump", "goto"):
            sub = rs.chains.get((chain.family, chain.table, target or ""))
            if sub is None:
                res.steps.append(
                    Step("unknown", f"{kind} to missing chain {target}", where, rule_text(rule))
                )
                continue
            verdict = _run_chain(rs, sub, ctx, res, depth + 1)
            if verdict is not None:
                return verdict
            if kind == "goto":
                return None
            continue
        if kind == "return":
            return None
        if kind == "continue":
            continue
        status = "fail" if kind in ("drop", "reject") else "ok"
        res.steps.append(Step(status, f"{kind}", where, rule_text(rule)))
        return kind
    return None


def _run_rule(
    rs: Ruleset, chain: Chain, rule: dict[str, Any], ctx: Ctx, res: HookResult
) -> tuple[str, str | None] | None:
    for expr in rule.get("expr", []):
        ((name, body),) = expr.items()
        if name == "match":
            if not _match(rs, chain, body, ctx):
                return None
        elif name == "xt" and body.get("type") == "match":
            if not xt.match(body, ctx, Unknown):
                return None
        elif name in NOOPS or (
            name == "xt" and body.get("type") == "target" and body.get("name") in ("LOG",)
        ):
            continue
        elif name in ("accept", "drop", "reject", "return", "continue"):
            return name, None
        elif name in ("jump", "goto"):
            return name, body["target"]
        elif name == "vmap":
            verdict = _lookup(rs, chain, _value(body["key"], ctx), body["data"])
            if verdict is None:
                return None
            ((vname, vbody),) = verdict.items()
            return vname, (vbody or {}).get("target") if isinstance(vbody, dict) else None
        elif name in ("masquerade", "snat", "dnat", "redirect") or (
            name == "xt" and body.get("name") in ("MASQUERADE",)
        ):
            kind = "masquerade" if name == "xt" else name
            addr = None
            port = None
            if isinstance(body, dict):
                addr = body.get("addr")
                port = body.get("port")
                if addr is not None and not isinstance(addr, str):
                    raise Unknown(f"{kind} to {json.dumps(addr)}")
                if port is not None and not isinstance(port, int):
                    raise Unknown(f"{kind} to port {json.dumps(port)}")
            res.nat = (kind, addr, port)
            return "accept", None
        else:
            raise Unknown(f"{name} {json.dumps(body)[:60]}" if body else name)
    return None


def _value(left: Any, ctx: Ctx) -> Any:
    if isinstance(left, dict):
        if "payload" in left:
            p = left["payload"]
            proto, fld = p.get("protocol"), p.get("field")
            if proto in ("ip", "ip6"):
                if (proto == "ip") != (ctx.family == 4):
                    return None
                return _field(
                    {
                        "saddr": ctx.src,
                        "daddr": ctx.dst,
                        "protocol": ctx.proto,
                        "nexthdr": ctx.proto,
                    },
                    fld,
                    proto,
                )
            if proto in ("tcp", "udp", "th"):
                if proto != "th" and proto != ctx.proto:
                    return None
                if ctx.proto not in ("tcp", "udp"):
                    return None
                return _field({"sport": ctx.sport, "dport": ctx.dport}, fld, proto)
            if proto in ("icmp", "icmpv6") and fld == "type":
                return ctx.icmp_type if ctx.proto == "icmp" else None
            raise Unknown(f"{proto} {fld}")
        if "meta" in left:
            key = left["meta"]["key"]
            values = {
                "iifname": ctx.iif,
                "oifname": ctx.oif,
                "iif": ctx.iif,
                "oif": ctx.oif,
                "l4proto": ctx.proto,
                "nfproto": "ipv4" if ctx.family == 4 else "ipv6",
                "protocol": "ip" if ctx.family == 4 else "ip6",
                "mark": 0,
                "pkttype": "host",
            }
            if key not in values:
                raise Unknown(f"meta {key}")
            return values[key]
        if "ct" in left:
            key = left["ct"]["key"]
            if key == "state":
                return ctx.ct_state
            if ctx.ct_state == "invalid":
                return None  # no conntrack entry: NFT_BREAK
            if key == "direction":
                return "reply" if ctx.reply else "original"
            raise Unknown(f"ct {key}")
        if "&" in left:
            raise Unknown("bitwise expression")
    raise Unknown(json.dumps(left)[:60])


def _field(values: dict[str, Any], name: str, proto: str) -> Any:
    if name not in values:
        raise Unknown(f"{proto} {name}")
    return values[name]


def _match(rs: Ruleset, chain: Chain, m: dict[str, Any], ctx: Ctx) -> bool:
    value = _value(m["left"], ctx)
    op = m.get("op", "==")
    if value is None:  # a header this packet does not have: the match fails
        return False
    right = m["right"]
    if op in ("==", "in", "!="):
        hit = _contains(rs, chain, value, right)
        return hit if op != "!=" else not hit
    if op in ("<", ">", "<=", ">=") and isinstance(value, int) and isinstance(right, int):
        return {"<": value < right, ">": value > right, "<=": value <= right, ">=": value >= right}[
            op
        ]
    raise Unknown(f"operator {op}")


def _contains(rs: Ruleset, chain: Chain, value: Any, right: Any) -> bool:
    if isinstance(right, str) and right.startswith("@"):
        s = rs.sets.get((chain.family, chain.table, right[1:]))
        if s is None:
            raise Unknown(f"set {right} not found")
        return any(_equal(value, e) for e in s.get("elem", []))
    if isinstance(right, dict) and "set" in right:
        return any(_equal(value, e) for e in right["set"])
    if isinstance(right, list):  # flags: ct state { established, related }
        return any(_equal(value, e) for e in right)
    return _equal(value, right)


def _equal(value: Any, elem: Any) -> bool:
    if isinstance(elem, dict):
        if "elem" in elem:
            return _equal(value, elem["elem"]["val"])
        if "prefix" in elem:
            try:
                return ip(str(value)) in net(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
            except ValueError:
                return False
        if "range" in elem:
            lo, hi = elem["range"]
            if isinstance(value, int):
                return bool(lo <= value <= hi)
            try:
                return bool(int(ip(lo)) <= int(ip(str(value))) <= int(ip(hi)))
            except (ValueError, TypeError):
                return False
        raise Unknown(json.dumps(elem)[:60])
    if isinstance(value, str) and isinstance(elem, int):
        return PROTO_NUM.get(value) == elem
    if isinstance(value, str) and isinstance(elem, str):
        if elem.endswith("*") or "\\" in elem:
            return fnmatch.fnmatchcase(value, elem.replace("\\", ""))
        if value == elem:
            return True
        try:
            return ip(value) == ip(elem)
        except ValueError:
            return False
    return bool(value == elem)


def _lookup(rs: Ruleset, chain: Chain, value: Any, data: Any) -> dict[str, Any] | None:
    if isinstance(data, str) and data.startswith("@"):
        m = rs.sets.get((chain.family, chain.table, data[1:]))
        if m is None:
            raise Unknown(f"map {data} not found")
        pairs = m.get("elem", [])
    elif isinstance(data, dict) and "set" in data:
        pairs = data["set"]
    else:
        raise Unknown("verdict map")
    for key, verdict in pairs:
        if value is not None and _equal(value, key):
            return verdict if isinstance(verdict, dict) else {verdict: None}
    return None


# --- rules as text ---------------------------------------------------------------


def rule_text(rule: dict[str, Any]) -> str:
    """A rule in nft's own syntax as far as we know it; JSON for the rest."""
    return " ".join(_expr_text(e) for e in rule.get("expr", []) if "counter" not in e)


def _expr_text(expr: dict[str, Any]) -> str:
    ((name, body),) = expr.items()
    if name == "match":
        op = body.get("op", "==")
        left = _operand(body["left"])
        right = _operand(body["right"])
        return f"{left} {right}" if op in ("==", "in") else f"{left} {op} {right}"
    if name in ("jump", "goto"):
        return f"{name} {body['target']}"
    if body is None:
        return name
    if name == "xt":
        return xt.text(body)
    if isinstance(body, dict) and name in ("snat", "dnat", "redirect"):
        to = body.get("addr", "")
        port = f":{body['port']}" if body.get("port") is not None else ""
        return f"{name} to {to}{port}".replace("to :", "to :")
    return f"{name} {json.dumps(body, separators=(',', ':'))}"


def _operand(x: Any) -> str:
    if isinstance(x, dict):
        if "payload" in x:
            return f"{x['payload'].get('protocol')} {x['payload'].get('field')}"
        if "meta" in x:
            return f"meta {x['meta']['key']}"
        if "ct" in x:
            return f"ct {x['ct']['key']}"
        if "prefix" in x:
            return f"{x['prefix']['addr']}/{x['prefix']['len']}"
        if "set" in x:
            return "{ " + ", ".join(_operand(e) for e in x["set"]) + " }"
        if "range" in x:
            return f"{x['range'][0]}-{x['range'][1]}"
        return json.dumps(x, separators=(",", ":"))
    if isinstance(x, list):
        if x and all(isinstance(e, list) for e in x):
            return json.dumps(x)
        return ",".join(_operand(e) for e in x)
    return str(x)
