"""Which forward-hook chains of a namespace can drop, by policy or by rule.

Reads Namespace.firewall in either of two forms: the per-chain summary
topology discovery stores (`{"chains": [{family, table, chain, hook, policy,
rules, drop_rules}, ...]}`, read over nfnetlink), or the full ruleset of
`nft -j list ruleset` (`{"nftables": [...]}`), where rule texts, handles and
the interface names that accept rules let through are available too.

iptables on current distributions is iptables-nft, so `iptables -A FORWARD -j
DROP` shows up here as table ip filter, chain FORWARD. Rules reached by
jump/goto (iptables user chains, Docker's DOCKER-USER...) are followed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DropRule:
    family: str
    table: str
    chain: str
    handle: int | None
    text: str  # the rule in nft's spirit: "ip protocol icmp drop"


@dataclass
class ForwardChain:
    family: str  # ip, ip6, inet, bridge
    table: str
    name: str
    policy_drop: bool = False
    drops: list[DropRule] = field(default_factory=list)
    drop_count: int = 0  # drop/reject rules (known even when their text is not)
    other_rules: int = 0  # accept/jump/... rules: exceptions someone wrote on purpose
    accepted_ifnames: set[str] = field(default_factory=set)

    @property
    def drops_anything(self) -> bool:
        return self.policy_drop or self.drop_count > 0

    def describe(self) -> str:
        """'ip protocol icmp drop', '2 drop rules', 'policy drop', or both."""
        parts = []
        if self.drops:
            parts.append(", ".join(f"'{d.text}'" for d in self.drops[:3]))
        elif self.drop_count:
            parts.append(f"{self.drop_count} drop rule" + ("s" if self.drop_count > 1 else ""))
        if self.policy_drop:
            parts.append("policy drop")
        return " and ".join(parts)


def ruleset_items(firewall: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The list of ruleset objects, or None when the ruleset was not read."""
    items = firewall.get("nftables")
    if isinstance(items, dict):
        items = items.get("nftables")
    return items if isinstance(items, list) else None


def forward_chains(firewall: dict[str, Any]) -> list[ForwardChain]:
    if isinstance(firewall.get("chains"), list):
        return _from_summary(firewall["chains"])
    items = ruleset_items(firewall) or []
    chains: dict[tuple[str, str, str], dict[str, Any]] = {}
    rules: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for item in items:
        if "chain" in item:
            c = item["chain"]
            chains[(c.get("family", ""), c.get("table", ""), c.get("name", ""))] = c
        elif "rule" in item:
            r = item["rule"]
            key = (r.get("family", ""), r.get("table", ""), r.get("chain", ""))
            rules.setdefault(key, []).append(r)
    out = []
    for key, c in chains.items():
        if c.get("hook") != "forward" or c.get("type", "filter") != "filter":
            continue
        fc = ForwardChain(key[0], key[1], key[2], policy_drop=c.get("policy") == "drop")
        _walk(key, rules, fc, set())
        fc.drop_count = len(fc.drops)
        out.append(fc)
    return out


def _from_summary(chains: list[dict[str, Any]]) -> list[ForwardChain]:
    out = []
    for c in chains:
        if c.get("hook") != "forward" or c.get("type", "filter") not in ("filter", ""):
            continue
        drops = int(c.get("drop_rules", 0))
        out.append(ForwardChain(
            c.get("family", ""), c.get("table", ""), c.get("chain", ""),
            policy_drop=c.get("policy") == "drop",
            drop_count=drops,
            other_rules=int(c.get("rules", 0)) - drops,
        ))
    return out


def _walk(
    key: tuple[str, str, str],
    rules: dict[tuple[str, str, str], list[dict[str, Any]]],
    fc: ForwardChain,
    visited: set[tuple[str, str, str]],
) -> None:
    if key in visited:
        return
    visited.add(key)
    for r in rules.get(key, []):
        exprs = r.get("expr", [])
        verdicts = {k for e in exprs if isinstance(e, dict) for k in e}
        if verdicts & {"drop", "reject"}:
            fc.drops.append(DropRule(key[0], key[1], key[2], r.get("handle"), rule_text(exprs)))
        else:
            fc.other_rules += 1
        if "accept" in verdicts:
            fc.accepted_ifnames |= _ifnames(exprs)
        for e in exprs:
            for jump in ("jump", "goto"):
                target = e.get(jump) if isinstance(e, dict) else None
                if isinstance(target, dict) and "target" in target:
                    _walk((key[0], key[1], target["target"]), rules, fc, visited)


def _ifnames(exprs: list[Any]) -> set[str]:
    names: set[str] = set()
    for e in exprs:
        m = e.get("match") if isinstance(e, dict) else None
        if not m:
            continue
        left = m.get("left", {})
        if isinstance(left, dict) and left.get("meta", {}).get("key") in ("iifname", "oifname"):
            right = m.get("right")
            if isinstance(right, str):
                names.add(right)
            elif isinstance(right, dict) and isinstance(right.get("set"), list):
                names |= {v for v in right["set"] if isinstance(v, str)}
    return names


def rule_text(exprs: list[Any]) -> str:
    """A readable approximation of one rule; exact enough to recognise it."""
    words: list[str] = []
    for e in exprs:
        if not isinstance(e, dict):
            continue
        if "match" in e:
            m = e["match"]
            op = "" if m.get("op") in ("==", "in") else f"{m.get('op')} "
            words.append(f"{_operand(m.get('left'))} {op}{_operand(m.get('right'))}")
        elif "drop" in e or "accept" in e:
            words.append(next(iter(e)))
        elif "reject" in e:
            words.append("reject")
        elif "jump" in e or "goto" in e:
            k = "jump" if "jump" in e else "goto"
            words.append(f"{k} {e[k].get('target')}")
    return " ".join(words) or "rule"


def _operand(v: Any) -> str:
    if isinstance(v, dict):
        if "payload" in v:
            p = v["payload"]
            return f"{p.get('protocol', '')} {p.get('field', '')}".strip()
        if "meta" in v:
            return str(v["meta"].get("key"))
        if "set" in v:
            return "{ " + ", ".join(_operand(x) for x in v["set"]) + " }"
        if "prefix" in v:
            return f"{v['prefix'].get('addr')}/{v['prefix'].get('len')}"
        if "ct" in v:
            return f"ct {v['ct'].get('key')}"
        return next(iter(v), "?")
    if isinstance(v, list):
        return "{ " + ", ".join(_operand(x) for x in v) + " }"
    return str(v)
