"""Findings for people (grouped by severity, the fix ready to paste) and for
scripts (`{"findings": [...]}` with the field names README's check section lists).

`check` shows them with `show_check`, trace reports with `render_findings`
(ping lists its path's findings one line each, in render/ping).
"""

from __future__ import annotations

import textwrap
from typing import Any

from rich.console import Console
from rich.text import Text

from vethtrace.console import prose_width
from vethtrace.model import SEVERITY_ORDER, Finding, Topology, to_dict

STYLE = {"error": "bold red", "warning": "bold yellow", "info": "bold blue"}
MARK = {"error": "✗", "warning": "!", "info": "i"}
PLURAL = {"error": "errors", "warning": "warnings", "info": "notes"}


def findings_json(findings: list[Finding]) -> dict[str, Any]:
    return {"findings": [to_dict(f) for f in findings]}


def finding_lines(
    f: Finding, width: int = 100, indent: int = 0, verbose: bool = False
) -> list[Text]:
    """One finding as lines no wider than `width` (fix commands excepted: they
    stay whole so they paste): headline, what, why, fix."""
    pad = " " * indent
    where = f"{f.netns}/{f.interface}" if f.interface else f.netns
    lines = [Text.assemble(pad, (f"{MARK[f.severity]} ", STYLE[f.severity]), (where, "bold"),
                           "  ", (f.rule, "dim"))]
    body = width - indent - 2
    lines += [Text(pad + "  " + line) for line in textwrap.wrap(f.summary, body)]
    # Notes stay short (what and the fix); the lesson is for what breaks traffic.
    why = textwrap.wrap(f.explanation, body - 5) if f.severity != "info" or verbose else []
    for i, line in enumerate(why):
        lines.append(Text.assemble(pad + "  ", ("why  " if i == 0 else "     ", "dim"), line))
    if f.fix:
        lines.append(Text.assemble(pad + "  ", ("fix", "dim")))
        lines += [Text(pad + "    " + cmd, style="green") for cmd in f.fix]
    return lines


def print_finding(console: Console, f: Finding, indent: int = 0) -> None:
    for line in finding_lines(f, prose_width(console), indent):
        console.print(line, soft_wrap=True)


def render_findings(
    console: Console, findings: list[Finding], scope: str = "", show_info: bool = True
) -> None:
    """All findings, worst first, under one heading per severity, then a tally."""
    shown = [f for f in findings if show_info or f.severity != "info"]
    for severity in sorted(SEVERITY_ORDER, key=SEVERITY_ORDER.__getitem__):
        group = [f for f in shown if f.severity == severity]
        if not group:
            continue
        console.print(Text(f"{PLURAL[severity].capitalize()} ({len(group)})",
                           style=STYLE[severity]))
        for f in group:
            print_finding(console, f)
            console.print()
    console.print(tally(findings, scope))


def show_check(
    console: Console, findings: list[Finding], topo: Topology, names: list[str] | None
) -> None:
    """`vethtrace check`: the findings over the namespaces asked for (all when
    `names` is None), then what discovery skipped, so silence is not overread."""
    count = len(topo.namespaces)
    scope = ", ".join(names) if names else f"{count} namespace{'s' * (count != 1)}"
    render_findings(console, findings, scope)
    for note in topo.notes:
        console.print(Text(f"note: {note}", style="dim"), soft_wrap=True)


def tally(findings: list[Finding], scope: str = "") -> Text:
    counts = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITY_ORDER}
    where = f" in {scope}" if scope else ""
    if not counts["error"] and not counts["warning"]:
        text = Text("✓ ", style="bold green")
        text.append(f"No problems found{where}")
        if counts["info"]:
            text.append(f" ({counts['info']} note{'s' if counts['info'] > 1 else ''} above)")
        return text
    parts = [
        (f"{n} {PLURAL[s][:-1] if n == 1 else PLURAL[s]}", STYLE[s])
        for s, n in counts.items() if n
    ]
    text = Text()
    for i, (label, style) in enumerate(parts):
        if i:
            text.append(", ")
        text.append(label, style=style)
    text.append(where)
    return text
