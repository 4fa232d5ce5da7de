"""Packet paths in few columns, as watch and trace reports list them.

One row per packet: what it is (`short_packet`), the devices it crossed
(`hop_chain`, the failing hop in red) and how it ended (`outcome_text`), with
the namespace prefix a lab or test shares named once (`NameShortener`).
Shared so that `report` of a trace recording reads like the watch screen.
"""

from __future__ import annotations

import re

from rich.text import Text

from vethtrace.model import PacketPath, Topology

OUTCOME_STYLE = {
    "delivered": "green",
    "diverted": "bold yellow",
    "dropped": "bold red",
    "consumed": "green",
    "in-flight": "cyan",
    "queued": "yellow",
}
OUTCOME_MARK = {
    "delivered": "✓",
    "diverted": "↪",
    "dropped": "✗",
    "consumed": "✓",
    "in-flight": "…",
    "queued": "…",
}


class NameShortener:
    """Lab and test namespaces share a long prefix ("vtt3f2a7-host",
    "vtt3f2a7-song"); repeating it on every hop hides the part that differs.
    The header names the prefix once and the body shows "host", "song"."""

    def __init__(self, topo: Topology | None) -> None:
        names = [ns.name for ns in (topo.namespaces if topo else []) if ns.name != "root"]
        self.prefix = _common_prefix(names) if len(names) >= 2 else ""

    def ns(self, name: str) -> str:
        if self.prefix and name.startswith(self.prefix) and len(name) > len(self.prefix):
            return name[len(self.prefix) :]
        return name

    def label(self, text: str) -> str:
        """Every namespace name in a text shortened: 'vtt-host/veth0' -> 'host/veth0'."""
        if not self.prefix:
            return text
        return re.sub(rf"(?<![\w-]){re.escape(self.prefix)}(?=\w)", "", text)


def _common_prefix(names: list[str]) -> str:
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    cut = prefix.rfind("-")
    return prefix[: cut + 1] if cut >= 0 else ""


def hop_chain(path: PacketPath, short: NameShortener) -> Text:
    """'song/veth1 → host/veth0 → br0': devices in order, the namespace named
    when it changes, the hop where it went wrong in red."""
    t = Text(no_wrap=True, overflow="ellipsis")
    last: tuple[str, str] | None = None
    last_ns = None
    for hop in path.hops:
        here = (hop.netns, hop.interface)
        if here == last:
            if not hop.ok:
                t.append(" ✗", style="bold red")
            continue
        if last is not None:
            t.append(" → ", style="dim")
        name = hop.interface if hop.netns == last_ns else f"{short.ns(hop.netns)}/{hop.interface}"
        t.append(name, style="bold red" if not hop.ok else "")
        if not hop.ok:
            t.append(" ✗", style="bold red")
        last, last_ns = here, hop.netns
    return t


def short_packet(path: PacketPath) -> str:
    """What the packet is, in few columns: the path next to it matters more."""
    s = path.summary
    if s is None:
        return path.hops[0].packet if path.hops else path.kind
    if s.arp_op == 1:
        return f"ARP who-has {s.arp_tpa}"
    if s.arp_op == 2:
        return f"ARP reply {s.arp_spa}"
    if s.icmp_type is not None:
        name = {8: "echo", 0: "echo reply", 3: "unreach"}.get(s.icmp_type, f"type {s.icmp_type}")
        seq = f" #{s.icmp_seq}" if s.icmp_seq is not None and s.icmp_type in (0, 8) else ""
        dst = _same_net(s.ip_src, s.ip_dst)
        src = _same_net(s.ip_dst, s.ip_src) if dst.startswith(".") else s.ip_src
        return f"ICMP {name} {src} > {dst}{seq}"
    return s.describe()


def _same_net(src: str | None, dst: str | None) -> str:
    """'.102' for 192.168.122.102 next to 192.168.122.101: the part that differs
    (same /24); the ARP rows around it carry the full addresses."""
    if not src or not dst or src.count(".") != 3 or dst.count(".") != 3:
        return str(dst)
    a, b = src.split("."), dst.split(".")
    if a[:3] == b[:3]:
        return "." + b[3]
    return dst


def outcome_text(path: PacketPath) -> Text:
    """'✓ delivered', '↪ diverted to br0', '✗ dropped NEIGH_FAILED' (watch and report)."""
    style = OUTCOME_STYLE.get(path.outcome, "")
    t = Text(f"{OUTCOME_MARK.get(path.outcome, '?')} {path.outcome}", style=style, no_wrap=True)
    if path.outcome == "queued":
        t.append(" for ARP", style=style)  # waits for its next hop's MAC
    if path.outcome == "diverted" and path.hops:
        t.append(f" to {path.hops[-1].interface}", style=style)
    if path.drop_reason:
        t.append(f" {path.drop_reason}", style=style)
    return t
