"""`vethtrace path` output: a traceroute of decisions, one line per hop,
forward then reply, and the first failing decision with its cause and fix.
Plain text when piped (rich strips the colours), JSON for scripts."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from vethtrace.console import prose_width
from vethtrace.diagnose.path import PathPrediction

MARK = {"ok": "[green]✓[/]", "fail": "[bold red]✗[/]", "unknown": "[yellow]?[/]"}


def to_json(pred: PathPrediction) -> str:
    return json.dumps(pred.to_dict(), indent=None)


def _table(console: Console, title: str, hops: list[Any], outcome: str) -> None:
    console.print(f"[bold]{title}[/]  ({outcome})")
    if not hops:
        return
    width = max(len(h.where) for h in hops)
    width = min(width, 28)
    for i, h in enumerate(hops, 1):
        where = h.where if len(h.where) <= width else h.where[: width - 1] + "…"
        line = f" {i:>2} {MARK[h.status]} {escape(where):<{width}}  {escape(h.decision)}"
        console.print(line, overflow="fold")
        if h.source:
            console.print(f"      {'':<{width}}  [dim]{escape(h.source)}[/]", overflow="fold")


def show(console: Console, pred: PathPrediction) -> None:
    f = pred.flow
    what = f.proto + (f"/{f.port}" if f.port else "")
    console.print(f"[bold]path[/] {what} from {f.src_netns} to {f.dst}")
    _table(console, "forward", pred.forward, pred.forward_outcome)
    if pred.reply_outcome != "none" and (pred.reply or pred.forward_outcome == "delivered"):
        _table(console, "reply", pred.reply, pred.reply_outcome)
    fail = pred.first_failure
    if fail is not None:
        console.print(f"\n[bold red]✗ fails at {escape(fail.where)}[/]: {escape(fail.decision)}")
        body = prose_width(console) - 7
        for label, text in (("why  ", fail.cause), ("from ", fail.source)):
            for i, line in enumerate(textwrap.wrap(text or "", body)):
                console.print(Text.assemble("  ", (label if i == 0 else "     ", "dim"), line),
                              soft_wrap=True)
        if fail.fix:  # whole lines, never folded or cut: they are pasted
            console.print(Text.assemble("  ", ("fix", "dim")))
            for cmd in fail.fix:
                console.print(Text("    " + cmd, style="green"), soft_wrap=True)
    elif pred.first_unknown is not None:
        u = pred.first_unknown
        console.print(
            f"\n[yellow]? uncertain at {escape(u.where)}[/]: {escape(u.cause or u.decision)}"
        )
    else:
        console.print("\n[green]✓ both directions succeed[/]")
