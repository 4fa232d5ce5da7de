"""`vethtrace check`: discover the topology, run the rules, show findings.

Exit 0 when nothing is at warning or above, 1 when something is, 2 on error.
Discovery always reads every namespace, because a verdict about one often
depends on another (a veth's peer, the router on the link); -n only narrows
which namespaces' findings are shown.
"""

from __future__ import annotations

import json
import sys

from vethtrace.console import make_console
from vethtrace.diagnose.check import run_rules
from vethtrace.errors import ExitStatus, require_root
from vethtrace.render.findings import findings_json, show_check
from vethtrace.topology import discover
from vethtrace.topology.query import netns_names


def run(as_json: bool = False, netns: list[str] | None = None) -> int:
    require_root("vethtrace check")
    topo = discover()
    names = netns_names(topo, netns) if netns else None
    findings = run_rules(topo, names)
    if as_json:
        sys.stdout.write(json.dumps(findings_json(findings), indent=2) + "\n")
    else:
        show_check(make_console(), findings, topo, names)
    if any(f.severity in ("error", "warning") for f in findings):
        return int(ExitStatus.FINDINGS)
    return int(ExitStatus.OK)
