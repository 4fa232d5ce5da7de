"""`vethtrace topo`: discover and show the topology (tree, JSON, DOT or SVG)."""

from __future__ import annotations

import sys

from vethtrace.errors import ExitStatus, require_root
from vethtrace.topology import discover, snapshot


def run(
    as_json: bool = False,
    dot: bool = False,
    svg: str | None = None,
    netns: list[str] | None = None,
) -> int:
    require_root("reading every namespace")
    topo = discover(netns or None)
    if as_json:
        # Indented for a person at a terminal; compact (5x faster) for scripts.
        sys.stdout.write(snapshot.dumps(topo, indent=2 if sys.stdout.isatty() else None) + "\n")
        return int(ExitStatus.OK)
    # rich and the renderers are imported only when needed: --json stays lean.
    from vethtrace.console import make_console
    from vethtrace.render import topo_dot, topo_tree

    if dot:
        sys.stdout.write(topo_dot.dot(topo))
    elif svg:
        topo_dot.render(topo_dot.dot(topo), svg)
        make_console(stderr=True).print(f"wrote {svg}")
    else:
        console = make_console()
        console.print(topo_tree.tree(topo))
        for line in topo_tree.notes(topo):
            console.print(line)
    return int(ExitStatus.OK)
