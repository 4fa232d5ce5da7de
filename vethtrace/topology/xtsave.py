"""The arguments of iptables-nft's `xt` matches, which nftables' JSON leaves out.

A rule made with iptables-nft that uses an extension nft cannot express
natively (`-m comment`, `-m conntrack --ctstate`, `-m addrtype`,
`-m multiport`, `-m physdev`...) is stored as an xt expression whose payload
is the extension's binary struct; `nft -j` prints only
`{"xt": {"type": "match", "name": "conntrack"}}`. iptables-nft-save decodes
the payload with the extension's own code, so we ask it (in the namespace) and
copy each match's arguments onto the xt expression it belongs to:
`{"xt": {..., "args": ["--ctstate", "RELATED,ESTABLISHED"]}}`.

Rules pair up by (family, table, chain, position): iptables-nft-save lists a
chain's rules in the order nft holds them (handle order), the order of the
JSON. A chain whose rule counts differ (native nft rules mixed into an
iptables table) is left alone: its xt matches stay unknown, never guessed.
Pure text handling; running the tool is pathfacts.ruleset_json's.
"""

from __future__ import annotations

import shlex
from typing import Any

SAVE_TOOLS = {"ip": "iptables-nft-save", "ip6": "ip6tables-nft-save"}
# option words that start something other than a match's arguments
_ENDS = ("-m", "-j", "-g")


def families_with_xt(items: list[dict[str, Any]]) -> set[str]:
    """Families (ip/ip6) whose rules hold an xt match: where the save tool is worth running."""
    out = set()
    for item in items:
        rule = item.get("rule")
        if rule and any("xt" in e and e["xt"].get("type") == "match" for e in rule.get("expr", [])):
            out.add(rule["family"])
    return out & set(SAVE_TOOLS)


def parse_save(text: str) -> dict[tuple[str, str], list[list[str]]]:
    """(table, chain) -> each `-A` line's tokens, in order."""
    out: dict[tuple[str, str], list[list[str]]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("-A "):
            try:
                tokens = shlex.split(line)
            except ValueError:
                tokens = line.split()
            out.setdefault((table, tokens[1]), []).append(tokens[2:])
    return out


def matches(tokens: list[str]) -> list[tuple[str, list[str]]]:
    """The `-m NAME args...` parts of one rule line, in order."""
    out: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(tokens):
        if tokens[i] == "-m" and i + 1 < len(tokens):
            name, args = tokens[i + 1], []
            i += 2
            while i < len(tokens) and tokens[i] not in _ENDS:
                args.append(tokens[i])
                i += 1
            out.append((name, args))
        else:
            i += 1
    return out


def annotate(items: list[dict[str, Any]], family: str, save_text: str) -> None:
    """Copy the save tool's match arguments onto `family`'s xt match expressions."""
    lines = parse_save(save_text)
    chains: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for item in items:
        rule = item.get("rule")
        if rule and rule.get("family") == family:
            chains.setdefault((rule["table"], rule["chain"]), []).append(rule)
    for key, rules in chains.items():
        saved = lines.get(key)
        if saved is None or len(saved) != len(rules):
            continue
        for rule, tokens in zip(rules, saved, strict=True):
            pending = matches(tokens)
            for expr in rule.get("expr", []):
                xt = expr.get("xt")
                if not xt or xt.get("type") != "match":
                    continue
                at = next(
                    (n for n, (name, _) in enumerate(pending) if name == xt.get("name")), None
                )
                if at is not None:
                    xt["args"] = pending.pop(at)[1]
