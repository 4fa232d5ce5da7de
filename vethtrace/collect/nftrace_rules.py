"""A namespace's rules by identity (family, table, chain, handle): their text
as `nft -a list ruleset` prints it, the hook of each base chain, and for rules
made by iptables-nft the line `iptables -S` prints.

Why text and not the JSON the path model reads (topology/pathfacts.py): a
trace event names a rule by handle, and the user compares it with `nft -a
list ruleset`; nft's own text is that exact line (nft.rule_text rebuilds an
approximation from JSON). Why positions for iptables: the kernel keeps no
link from an nft rule to an iptables line (comments survive as rule userdata,
other matches as xt expressions or native ones), but iptables-nft lists a
chain's rules in the kernel's order, exactly as nft does; so the n-th rule
of chain C in nft is the n-th `-A C` line, provided the chain holds as many
rules in both listings (otherwise no iptables form is claimed).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field

_TABLE = re.compile(r"^table (\S+) (\S+) \{")
_CHAIN = re.compile(r"^\s*chain (\S+) \{")
_HOOK = re.compile(r"^\s*type \S+ hook (\S+) (?:device \S+ )?priority ([^;]+);")
_HANDLE = re.compile(r"^(.*?)\s*# handle (\d+)\s*$")
_COUNTER = re.compile(r"counter packets \d+ bytes \d+")
IPTABLES = {"ip": "iptables-nft", "ip6": "ip6tables-nft"}


@dataclass
class ChainInfo:
    hook: str | None = None
    priority: str | None = None
    rules: dict[int, str] = field(default_factory=dict)  # handle -> text, in order
    iptables: dict[int, str] = field(default_factory=dict)  # handle -> `iptables -S` line
    by_iptables: bool = False  # its table was made by iptables-nft (policy as `-P`)


Key = tuple[str, str, str]  # family, table, chain


def parse_listing(text: str) -> dict[Key, ChainInfo]:
    """`nft -a list ruleset` (text) -> chains with their rules by handle."""
    out: dict[Key, ChainInfo] = {}
    table: tuple[str, str] | None = None
    chain: ChainInfo | None = None
    for line in text.splitlines():
        if m := _TABLE.match(line):
            table, chain = (m.group(1), m.group(2)), None
            continue
        if table is None:
            continue
        if m := _CHAIN.match(line):
            chain = out.setdefault((table[0], table[1], m.group(1)), ChainInfo())
            continue
        if chain is None:
            continue
        if m := _HOOK.match(line):
            chain.hook, chain.priority = m.group(1), m.group(2).strip()
            continue
        if line.strip() == "}":
            chain = None
            continue
        if m := _HANDLE.match(line):
            body = " ".join(_COUNTER.sub("counter", m.group(1)).split())
            chain.rules[int(m.group(2))] = body
    return out


def parse_iptables_s(text: str) -> dict[str, list[str]]:
    """`iptables -S` -> chain -> its `-A` lines in order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("-A "):
            try:
                chain = shlex.split(line)[1]
            except (ValueError, IndexError):
                continue
            out.setdefault(chain, []).append(line)
        elif line.startswith("-N "):
            out.setdefault(line.split()[1], [])
    return out


def attach_iptables(chains: dict[Key, ChainInfo], family: str, table: str, listing: str) -> bool:
    """Give the chains of one table their `iptables -S` lines, by position;
    nothing when any chain's rule count differs (a rule added meanwhile, or a
    table iptables did not make). True when attached."""
    lines = parse_iptables_s(listing)
    mine = {k[2]: c for k, c in chains.items() if k[0] == family and k[1] == table}
    if not mine or any(len(lines.get(name, [])) != len(c.rules) for name, c in mine.items()):
        return False
    for name, c in mine.items():
        c.iptables = dict(zip(c.rules, lines.get(name, []), strict=True))
        c.by_iptables = True
    return True


def iptables_listing(family: str, table: str, timeout: float = 5.0) -> str | None:
    """`iptables-nft -t TABLE -S` in the calling thread's namespace (a child
    forked from a thread inherits that thread's namespace); None when it fails
    (not an iptables table, tool missing)."""
    tool = IPTABLES.get(family)
    if tool is None:
        return None
    try:
        done = subprocess.run(
            [tool, "-t", table, "-S"], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def load_here(nft: object) -> dict[Key, ChainInfo]:
    """The calling thread's namespace's rules, through a libnftables context
    created there, with iptables forms where iptables-nft made the table."""
    nft.set_json_output(False)  # type: ignore[attr-defined]
    nft.set_handle_output(True)  # type: ignore[attr-defined]
    rc, out, _err = nft.cmd("list ruleset")  # type: ignore[attr-defined]
    if rc != 0:
        return {}
    chains = parse_listing(out)
    for family, table in sorted({(k[0], k[1]) for k in chains}):
        if family in IPTABLES and not table.startswith("vethtrace_"):
            listing = iptables_listing(family, table)
            if listing is not None:
                attach_iptables(chains, family, table, listing)
    return chains
