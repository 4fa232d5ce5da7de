"""How nftables trace events and the rule culprit are shown: one line per
rule verdict (trace, watch, report, ping's path), the culprit block of ping.

A verdict line reads like nft itself would name the rule, so it can be
pasted: `vt-fw  ip filter FORWARD handle 5 (forward, in veth0 out br0):
drop  ip saddr 10.0.0.1 drop  [iptables: -A FORWARD -s 10.0.0.1/32 -j DROP]`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rich.text import Text

from vethtrace.diagnose.nftrace import ours, rule_id, verdict_word
from vethtrace.model import Hop, NftraceEvent, PacketPath, to_dict

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


# Hooks that run on the way in (after the frame was received on iif) and on
# the way out (before it is sent on oif); forward has both and runs after
# the receive.
INBOUND = {"ingress", "prerouting", "input", "forward"}
POINT = "nftrace"  # Hop.point of a rule verdict woven into a packet's path


def weave(
    groups: list[tuple[str, list[Hop]]],
    events: Iterable[NftraceEvent],
    ip: str,
    netns_name: Callable[[int], str],
) -> tuple[list[tuple[str, list[Hop]]], list[NftraceEvent]]:
    """Each rule verdict on the ping's traffic placed in its packet's path
    (groups: (packet description, hops), render/ping.py), at the hop where its
    hook fired. The kernel's trace message has no timestamp, so the place
    comes from what it does say: the namespace, the hook and the devices. An
    inbound hook (prerouting, input, forward) runs after the packet was
    received on iif: after the first hop at (netns, iif); an outbound one
    (output, postrouting) before it is sent on oif: before the first hop at
    (netns, oif); verdicts at one place keep the order they were read in.
    Without such a hop, after the packet's last hop in that namespace, else
    at its end. Returns new groups and the verdicts of no packet shown."""
    out = [(title, list(hops)) for title, hops in groups]
    index = {title: i for i, (title, _h) in enumerate(out)}
    left: list[NftraceEvent] = []
    for ev in sorted(events, key=lambda e: e.ts_ns):
        if not ours(ev, ip) or (ev.kind == "rule" and ev.handle is None):
            continue  # (a handle-less rule event: the chain ran to its end)
        i = index.get(ev.packet.describe()) if ev.packet is not None else None
        if i is None:
            left.append(ev)
            continue
        hops = out[i][1]
        name = netns_name(ev.netns)
        pos = _place(hops, ev, name)
        anchor = hops[min(pos, len(hops) - 1)] if hops else None
        hops.insert(pos, Hop(
            netns=name, interface=ev.iif or ev.oif or "-", point=POINT,
            packet=ev.packet.describe() if ev.packet else "",
            ts_ns=anchor.ts_ns if anchor else ev.ts_ns,
            ok=ev.verdict != "drop", note=f"nftables {describe(ev)}",
        ))  # fmt: skip
    return out, left


def _place(hops: list[Hop], ev: NftraceEvent, name: str) -> int:
    def first_at(dev: str | None) -> int | None:
        return next(
            (k for k, h in enumerate(hops)
             if h.point != POINT and h.netns == name and h.interface == dev),
            None,
        )  # fmt: skip

    if ev.hook in INBOUND and ev.iif:
        k = first_at(ev.iif)
        if k is not None:
            k += 1
            while k < len(hops) and hops[k].point == POINT:
                k += 1  # after the verdicts already placed there
            return k
    if ev.oif:
        k = first_at(ev.oif)
        if k is not None:
            return k
    same = [k for k, h in enumerate(hops) if h.netns == name]
    return same[-1] + 1 if same else len(hops)


def assign(
    paths: Sequence[PacketPath], events: Iterable[NftraceEvent], netns_name: Callable[[int], str]
) -> list[list[NftraceEvent]]:
    """watch: each path's rule verdicts (a list per path, in paths' order). A
    verdict belongs to the latest path of the same packet (its description:
    a TCP flow's segments share one, so time decides) that had begun by the
    time it was read and crosses its namespace."""
    out: list[list[NftraceEvent]] = [[] for _ in paths]
    by_packet: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        if p.summary is not None:
            by_packet.setdefault(p.summary.describe(), []).append(i)
    for ev in sorted(events, key=lambda e: e.ts_ns):
        if ev.packet is None or (ev.kind == "rule" and ev.handle is None):
            continue
        name = netns_name(ev.netns)
        fits = [
            i for i in by_packet.get(ev.packet.describe(), ())
            if paths[i].first_ns <= ev.ts_ns and any(h.netns == name for h in paths[i].hops)
        ]  # fmt: skip
        if fits:
            out[max(fits, key=lambda i: paths[i].first_ns)].append(ev)
    return out


def short_verdicts(
    events: Sequence[NftraceEvent], ns_label: Callable[[int], str], most: int = 3
) -> list[tuple[Text, Text]]:
    """watch's rows under a path: the verdicts that decided (accept, drop,
    reject, policy; not the jumps and returns between), at most `most` (the
    drops first): (`ns hook: family table chain #handle`, the verdict word in
    its colour), so the word lines up with the paths' outcome column."""
    shown = [e for e in events if e.verdict in ("accept", "drop") or e.kind == "policy"]
    shown = shown or list(events)
    if len(shown) > most:
        shown = sorted(shown, key=lambda e: e.verdict != "drop")[:most]
    rows = []
    for ev in shown:
        what = "policy" if ev.kind == "policy" else f"#{ev.handle}"
        hook = f" {ev.hook}" if ev.hook and ev.hook != ev.chain.lower() else ""
        place = f"{ns_label(ev.netns)}{hook}: {ev.family} {ev.table} {ev.chain} {what}"
        word = verdict_word(ev)
        rows.append((
            Text(place, style="dim", no_wrap=True, overflow="ellipsis"),
            Text(word, style=VERDICT_STYLE.get(word.split()[-1], ""), no_wrap=True),
        ))  # fmt: skip
    return rows


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
