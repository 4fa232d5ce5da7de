"""How nftables trace events and the rule culprit are shown: one line per
rule verdict (trace, watch, report, ping's path), the culprit block of ping.

A verdict line reads like nft itself would name the rule, so it can be
pasted: `vt-fw  ip filter FORWARD handle 5 (forward, in veth0 out br0):
drop  ip saddr 10.0.0.1 drop  [iptables: -A FORWARD -s 10.0.0.1/32 -j DROP]`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rich.text import Text

from vethtrace.diagnose.nftrace import ours, rule_id, verdict_word
from vethtrace.model import NftraceEvent, to_dict

VERDICT_STYLE = {"drop": "bold red", "reject": "bold red", "accept": "green"}


def where(ev: NftraceEvent) -> str:
    dev = " ".join(
        x for x in (f"in {ev.iif}" if ev.iif else "", f"out {ev.oif}" if ev.oif else "") if x
    )
    ctx = ", ".join(x for x in (ev.hook or "", dev) if x)
    return f"{rule_id(ev)}" + (f" ({ctx})" if ctx else "")


def describe(ev: NftraceEvent) -> str:
    """`ip filter FORWARD handle 5 (forward, in v0 out br0): drop  <rule>  [iptables: ...]`"""
    text = f"{where(ev)}: {verdict_word(ev)}"
    if ev.rule and ev.kind != "policy":
        text += f"  {ev.rule}"
    if ev.iptables:
        text += f"  [iptables: {ev.iptables}]"
    return text


def line(ev: NftraceEvent, t0: int, netns_name: Callable[[int], str]) -> Text:
    """A row in trace's table (same columns as the kernel events)."""
    text = Text(f"{(ev.ts_ns - t0) / 1e9:10.6f} ", style="dim")
    text.append(f"{netns_name(ev.netns)[:16]:<16} ", style="cyan")
    text.append(f"{(ev.iif or ev.oif or '-')[:10]:<10} ", style="bold")
    text.append(f"{'nftrace':<21} ", style="magenta")
    word = verdict_word(ev)
    text.append(f"{where(ev)}: ")
    text.append(word, style=VERDICT_STYLE.get(word.split()[-1], ""))
    if ev.rule and ev.kind != "policy":
        text.append(f"  {ev.rule}", style="dim")
    if ev.iptables:
        text.append(f"  [iptables: {ev.iptables}]", style="dim")
    if ev.packet is not None:
        text.append(f"  | {ev.packet.describe()}", style="dim")
    return text


def json_obj(ev: NftraceEvent, netns_name: str) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "nftrace", **to_dict(ev)}
    d["netns_name"] = netns_name
    d["verdict_text"] = verdict_word(ev)
    if ev.packet is not None:
        d["summary"] = ev.packet.describe()
    return d


def path_lines(
    events: Iterable[NftraceEvent], ip: str, netns_name: Callable[[int], str]
) -> list[tuple[bool, str]]:
    """(ok, text) per rule verdict on the ping's traffic, in order."""
    out = []
    for ev in sorted(events, key=lambda e: e.ts_ns):
        if not ours(ev, ip) or (ev.kind == "rule" and ev.handle is None):
            continue  # (a handle-less rule event: the chain ran to its end)
        pkt = f"{ev.packet.describe()}: " if ev.packet else ""
        out.append((ev.verdict != "drop", f"{netns_name(ev.netns)}  {pkt}{describe(ev)}"))
    return out


def culprit_lines(c: dict[str, Any]) -> list[str]:
    """The rule culprit of ping, for the terminal."""
    what = "policy" if c["kind"] == "policy" else f"handle {c['handle']}"
    head = f"rule: {c['netns']}  {c['family']} {c['table']} {c['chain']} {what}"
    if c.get("hook"):
        head += f" (hook {c['hook']})"
    head += f": {c['verdict']}" + ("" if c.get("confirmed") else " (predicted)")
    out = [head]
    if c.get("rule") and c["kind"] != "policy":
        out.append(f"      {c['rule']}")
    if c.get("iptables"):
        out.append(f"      iptables: {c['iptables']}")
    return out
