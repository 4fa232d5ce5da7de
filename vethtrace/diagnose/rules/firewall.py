"""Firewall visibility: what vethtrace can and cannot see of a namespace's
packet filter.

Legacy iptables (x_tables, `iptables-legacy`) registers its own hooks beside
nf_tables: its rules run on the same packets, but `nft list ruleset`, the
path model (which reads nftables and iptables-nft) and the kernel's nftables
trace (`--nftrace`, nf_tables only) do not see them. Discovery lists the
legacy tables a namespace has loaded (/proc/net/ip_tables_names, in
firewall.iptables_legacy); this rule says so where it matters, so a drop by
a legacy rule is never mistaken for "no rule".
"""

from __future__ import annotations

from collections.abc import Iterator

from vethtrace.diagnose.rules.base import Context, finding, rule
from vethtrace.model import Finding, Namespace


def legacy_tables(ns: Namespace) -> list[str]:
    return list(ns.firewall.get("iptables_legacy") or [])


def legacy_text(ns: Namespace) -> str:
    """One sentence on what cannot be seen in ns (check, ping and --nftrace say it)."""
    tables = ", ".join(legacy_tables(ns))
    return (
        f"{ns.name} has legacy iptables (x_tables) tables loaded ({tables}): their rules are "
        "outside nf_tables, so neither the path model nor --nftrace (the nftables trace sees "
        "nf_tables only) can see them; a drop by one shows only as the kernel's "
        f"NETFILTER_DROP (`iptables-legacy-save` in {ns.name} lists them)"
    )


@rule("iptables-legacy", "legacy iptables (x_tables) tables: rules vethtrace cannot read or trace")
def iptables_legacy(ctx: Context) -> Iterator[Finding]:
    for ns in ctx.topo.namespaces:
        if not legacy_tables(ns):
            continue
        yield finding(
            "iptables-legacy", "info", ns,
            f"legacy iptables tables loaded: {', '.join(legacy_tables(ns))} (rules not readable "
            "by vethtrace, not traced by --nftrace)",
            legacy_text(ns) + ". What is seen: the drop itself and where (kernel events), "
            "nftables and iptables-nft rules (read, evaluated and traced).",
        )  # fmt: skip
