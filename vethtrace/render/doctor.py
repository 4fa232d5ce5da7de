"""How `vethtrace doctor` shows its findings: the checks table, the probe plan, the answer.

A pure function of gather()'s dictionary (the same object `doctor --json`
prints), so the table and the JSON can never tell different stories.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def show(console: Console, report: dict[str, Any], seconds: float) -> None:
    """The checks (ok/no and why), then per probe point the mechanism chosen,
    its hooks, what it cannot see and why better ones were refused."""
    table = Table(title=f"vethtrace doctor — kernel {report['kernel']}", title_justify="left")
    table.add_column("check", style="bold", no_wrap=True)
    table.add_column("", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for c in report["checks"].values():
        table.add_row(c["name"], "[green]ok[/]" if c["ok"] else "[red]no[/]", c["detail"])
    console.print(table)
    plan = report["plan"]
    if plan:
        ptable = Table(title="probe plan", title_justify="left", show_lines=True)
        ptable.add_column("probe point", style="bold", no_wrap=True)
        ptable.add_column("via", no_wrap=True)
        ptable.add_column("hooks; what this choice cannot see", overflow="fold")
        for p in plan["points"]:
            text = ", ".join(p["hooks"]) or "-"
            if p["blind_spot"]:
                text += f"\n[yellow]cannot see:[/] {p['blind_spot']}"
            if p["tried"]:
                text += "\n[dim]" + "; ".join(p["tried"]) + "[/]"
            ptable.add_row(p["point"], p["mechanism"], text)
        console.print(ptable)
        console.print(f"delivery: {plan['delivery']}", highlight=False)
    verdict = (
        "[green]tracing possible[/]"
        if report["tracing_possible"]
        else "[red]no tracing possible here[/] (see the checks marked no)"
    )
    console.print(f"{verdict}  ({seconds:.1f} s)")
