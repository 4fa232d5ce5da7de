"""`vethtrace lab list | show NAME | up NAME | down [NAME]`.

The namespace prefix is "vt-" unless VETHTRACE_LAB_PREFIX says otherwise, so
tests and people can run labs side by side without touching each other's.
"""

from __future__ import annotations

from pathlib import Path

from vethtrace import lab as labs
from vethtrace import signals
from vethtrace.console import make_console
from vethtrace.errors import ExitStatus, UserError
from vethtrace.lab.scenario import Scenario, load_path, scenario_paths
from vethtrace.render import lab as render


def run(action: str, name: str | None = None) -> int:
    prefix = labs.default_prefix()
    if action == "list":
        return _list()
    if name is None and action in ("show", "up"):
        raise UserError(f"lab {action} needs a scenario NAME (see `vethtrace lab list`)")
    if action == "show":
        make_console().print(render.describe(labs.load(name or ""), prefix), soft_wrap=False)
        return int(ExitStatus.OK)
    if action == "up":
        return _up(name or "", prefix)
    if action == "down":
        return _down(name, prefix)
    raise UserError(f"unknown lab action {action!r}")


def _list() -> int:
    up = {s.name for s in labs.built(labs.default_prefix()) if s.complete}  # still there
    rows: list[tuple[Path, Scenario | str]] = []
    for path in scenario_paths():
        try:
            rows.append((path, load_path(path)))
        except UserError as exc:  # one bad file must not hide the others
            rows.append((path, str(exc)))
    make_console().print(render.scenario_table(rows, up))
    return int(ExitStatus.OK)


def _up(name: str, prefix: str) -> int:
    # Once built, the lab is kept: signals are ignored from then on, `up` prints
    # it and exits 0 (before that, an interrupted `up` rolls back: README "Labs").
    render.show_built(make_console(), labs.up(name, prefix, on_built=signals.hold), prefix)
    return int(ExitStatus.OK)


def _down(name: str | None, prefix: str) -> int:
    console = make_console()
    for st in labs.down(name, prefix):
        console.print(f"removed lab {st.name}: {', '.join(st.namespaces) or 'nothing built'}")
        for note in st.notes:  # CNI DELs that failed (lab/cni.py teardown)
            console.print(f"note: {note}", style="yellow", markup=False)
    return int(ExitStatus.OK)
