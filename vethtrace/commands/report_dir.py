"""`vethtrace report DIR [--since T] [--until T] [--at T] [-n NETNS]`: a flight recorder's story.

Wiring only (commands/report.py hands a directory here): read the segments
that cover the window (recorder/segments.py), build the timeline
(recorder/timeline.py), and with --at run check's rules on the topology as
it was then, then render (render/timeline.py). Like `report FILE` it needs
no root, bcc or scapy. Exit 0 when the window holds no drop and check (if
asked) is clean, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import json
import time

from vethtrace.console import make_console
from vethtrace.errors import ExitStatus, UserError
from vethtrace.model import Finding, Topology
from vethtrace.recorder.segments import read_dir
from vethtrace.recorder.timeline import build
from vethtrace.recorder.when import parse_moment

DEFAULT_SINCE = "1h"


def run(
    path: str,
    as_json: bool,
    since: str | None,
    until: str | None,
    at: str | None,
    netns: list[str],
) -> int:
    now = time.time()
    t0 = parse_moment(since or DEFAULT_SINCE, now, "--since")
    t1 = parse_moment(until, now, "--until") if until else now
    t_at = parse_moment(at, now, "--at") if at else None
    if t1 < t0:
        raise UserError(f"--until is before --since ({until} < {since})")
    rd = read_dir(path, since=min(t0, t_at) if t_at is not None else t0, until=max(t1, t_at or t1))
    tl = build(rd, t0, t1, netns)
    findings: list[Finding] | None = None
    topo: Topology | None = None
    if t_at is not None:
        topo = rd.topology_at(t_at)
        findings = _check(topo, netns)
    if as_json:
        from vethtrace.render.timeline import to_json

        print(json.dumps(to_json(tl, path, t_at, findings), indent=2))
    else:
        from vethtrace.render.timeline import show

        show(make_console(), tl, path, t_at, findings, topo)
    serious = [f for f in findings or [] if f.severity != "info"]
    return int(ExitStatus.FINDINGS if tl.drops or serious else ExitStatus.OK)


def _check(topo: Topology, netns: list[str]) -> list[Finding]:
    from vethtrace.diagnose.check import run_rules

    known = {ns.name for ns in topo.namespaces}
    missing = [n for n in netns if n not in known]
    if missing:
        raise UserError(f"no namespace named {', '.join(missing)} at that moment")
    return run_rules(topo, netns or None)
