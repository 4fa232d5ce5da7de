"""Run every registered rule over a Topology and return the findings, worst first.

Rules always see the whole topology they are given (a veth's peer, the
router on the link, the bridge in another namespace matter to a verdict about
one namespace); `netns` only narrows which namespaces' findings are reported.
Give it a full discovery where you can: namespaces read partially (peers
outside a selection) are used as context but never judged.
"""

from __future__ import annotations

from vethtrace.diagnose.rules import RULES, Context
from vethtrace.model import SEVERITY_ORDER, Finding, Topology


def run_rules(
    topo: Topology, netns: list[str] | None = None, only: list[str] | None = None
) -> list[Finding]:
    """Findings sorted by severity, then namespace, interface and rule.

    `only` limits the run to these rule ids (tests, and ping's focused checks).
    """
    ctx = Context(topo)
    findings: list[Finding] = []
    for phase in sorted({r.phase for r in RULES}):
        ctx.findings = list(findings)
        for r in RULES:
            if r.phase != phase or (only is not None and r.id not in only):
                continue
            try:
                findings.extend(r.fn(ctx))
            except Exception as exc:  # one rule tripping over odd data must not hide the rest
                topo.notes.append(f"check rule {r.id} skipped: {type(exc).__name__}: {exc}")
    # Namespaces read only partially (outside a discover(-n) selection) lack
    # addresses, routes and sysctls: judging them would be guessing.
    partial = {ns.name for ns in topo.namespaces if ns.partial}
    findings = [f for f in findings if f.netns not in partial]
    if netns:
        wanted = set(netns)
        findings = [f for f in findings if f.netns in wanted]
    # The same finding can be reached twice (e.g. from both ends of a link).
    unique = {(f.rule, f.netns, f.interface, f.summary): f for f in findings}
    return sorted(
        unique.values(),
        key=lambda f: (SEVERITY_ORDER[f.severity], f.netns, f.interface or "", f.rule),
    )


def rule_ids() -> list[str]:
    return [r.id for r in RULES]


def worst(findings: list[Finding]) -> str | None:
    """The most severe level present, or None."""
    return min((f.severity for f in findings), key=SEVERITY_ORDER.__getitem__, default=None)
