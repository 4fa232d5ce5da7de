"""`vethtrace check`: discover the topology, run the rules, show findings.

Exit 0 when nothing is at warning or above, 1 when something is, 2 on error.
Discovery always reads every namespace, because a verdict about one often
depends on another (a veth's peer, the router on the link); -n only narrows
which namespaces' findings are shown.
"""

from __future__ import annotations

import json
import sys

from rich.text import Text

from vethtrace.console import make_console
from vethtrace.diagnose.check import run_rules
from vethtrace.errors import ExitStatus, UserError, require_root
from vethtrace.model import Topology
from vethtrace.render.findings import findings_json, render_findings
from vethtrace.topology import discover


def resolve(topo: Topology, wanted: list[str]) -> list[str]:
    """Namespace names for what a user typed: a name, 'root', pid:N or an inode."""
    names = []
    for w in wanted:
        pid = w.removeprefix("pid:").split("(")[0]
        ns = topo.netns_by_name(w) or next(
            (n for n in topo.namespaces
             if str(n.inode) == w or (pid.isdigit() and int(pid) in n.pids)),
            None,
        )
        if ns is None:
            raise UserError(f"no network namespace named {w!r} (see `ip netns list`)")
        names.append(ns.name)
    return names


def run(as_json: bool = False, netns: list[str] | None = None) -> int:
    require_root("vethtrace check")
    topo = discover()
    names = resolve(topo, netns) if netns else None
    findings = run_rules(topo, names)
    if as_json:
        sys.stdout.write(json.dumps(findings_json(findings), indent=2) + "\n")
    else:
        scope = (", ".join(names) if names
                 else f"{len(topo.namespaces)} namespace{'s' * (len(topo.namespaces) != 1)}")
        console = make_console()
        render_findings(console, findings, scope)
        for note in topo.notes:  # what discovery skipped, so silence is not overread
            console.print(Text(f"note: {note}", style="dim"), soft_wrap=True)
    if any(f.severity in ("error", "warning") for f in findings):
        return int(ExitStatus.FINDINGS)
    return int(ExitStatus.OK)
