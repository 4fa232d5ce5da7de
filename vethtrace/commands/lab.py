"""`vethtrace lab list | show NAME | up NAME | down [NAME]`.

The namespace prefix is "vt-" unless VETHTRACE_LAB_PREFIX says otherwise, so
tests and people can run labs side by side without touching each other's.
"""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from vethtrace import lab as labs
from vethtrace.console import make_console
from vethtrace.errors import ExitStatus, UserError
from vethtrace.lab.scenario import (
    Link,
    PingExpect,
    Scenario,
    TcpExpect,
    load_path,
    scenario_paths,
)


def run(action: str, name: str | None = None) -> int:
    prefix = labs.default_prefix()
    if action == "list":
        return _list()
    if name is None and action in ("show", "up"):
        raise UserError(f"lab {action} needs a scenario NAME (see `vethtrace lab list`)")
    if action == "show":
        make_console().print(describe(labs.load(name or ""), prefix), soft_wrap=False)
        return int(ExitStatus.OK)
    if action == "up":
        return _up(name or "", prefix)
    if action == "down":
        return _down(name, prefix)
    raise UserError(f"unknown lab action {action!r}")


def _list() -> int:
    console = make_console()
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("NAME", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("SUMMARY")
    up = {s.name for s in labs.built(labs.default_prefix()) if s.complete}  # still there
    for path in scenario_paths():
        try:
            scn = load_path(path)
        except UserError as exc:  # one bad file must not hide the others
            table.add_row(path.stem, Text("invalid", style="red"), escape(str(exc)))
            continue
        kind = Text("broken", style="yellow") if scn.broken else Text("working", style="green")
        if scn.name in up:
            kind.append(" (up)", style="bold")
        table.add_row(scn.name, kind, escape(scn.summary))
    console.print(table)
    return int(ExitStatus.OK)


def _link_line(link: Link, scn: Scenario, prefix: str) -> Text:
    t = Text()
    t.append(link.name, style="bold")
    t.append(f"  {link.kind}")
    if link.kind == "veth" and link.peer:
        t.append(f" <-> {prefix}{link.peer[0]}/{link.peer[1]}")
    if link.lower:
        t.append(f" on {link.lower}")
    if link.mode:
        t.append(f" mode {link.mode}")
    if link.master:
        t.append(f", master {link.master}")
    t.append(", ")
    t.append("up" if link.up else "DOWN", style="green" if link.up else "red")
    if link.addresses:
        t.append(", " + " ".join(link.addresses), style="cyan")
    elif link.kind == "bridge" or not link.master:
        t.append(", no address", style="dim")
    if link.mtu:
        t.append(f", mtu {link.mtu}")
    if link.mac:
        t.append(f", mac {link.mac}")
    if link.kind == "bridge":
        t.append(", stp on" if link.stp else "")
        t.append(", vlan_filtering" if link.vlan_filtering else "")
    if link.port:
        opts = [
            f"{k} {v}".replace("True", "on").replace("False", "off")
            for k, v in vars(link.port).items()
            if v is not None
        ]
        t.append(", port: " + ", ".join(opts))
    return t


def build_tree(scn: Scenario, prefix: str) -> Tree:
    """What the scenario builds, namespace by namespace, with real names."""
    tree = Tree(Text(f"namespaces (prefix {prefix})", style="bold"))
    for ns in scn.netns:
        label = Text(f"{prefix}{ns.name}", style="bold magenta")
        if not ns.lo:
            label.append("  (lo down)", style="red")
        branch = tree.add(label)
        for link in scn.links_in(ns.name):
            branch.add(_link_line(link, scn, prefix))
        for key, value in ns.sysctl.items():
            branch.add(Text(f"sysctl {key} = {value}", style="dim"))
        if ns.nft:
            rules = Text("nft ruleset:\n", style="dim")
            rules.append(ns.nft.strip("\n"), style="yellow")
            branch.add(rules)
        for r in (r for r in scn.routes if r.netns == ns.name):
            line = f"route {r.dst}" + (f" via {r.via}" if r.via else "")
            line += f" dev {r.dev}" if r.dev else ""
            branch.add(Text(line, style="blue"))
        for n in (n for n in scn.neighs if n.netns == ns.name):
            branch.add(Text(f"neighbour {n.ip} lladdr {n.mac} dev {n.dev} (permanent)"))
        for c in (c for c in scn.cni if c.netns == ns.name):
            line = f"CNI {c.name} ({' -> '.join(c.types)}): {prefix}{c.container}/{c.ifname}"
            line += f" {' '.join(c.addresses)}" if c.addresses else ""
            line += ", left down" if not c.up else ""
            branch.add(Text(line, style="cyan"))
    return tree


def describe(scn: Scenario, prefix: str) -> Tree:
    """`lab show`: the story, what it builds, what should work and fail, and why."""
    kind = Text(" (broken)", style="yellow") if scn.broken else Text(" (working)", style="green")
    root = Tree(Text(scn.name, style="bold").append(kind).append(f": {scn.summary}"))
    if scn.description:
        root.add(Text(" ".join(scn.description.split())))
    root.add(build_tree(scn, prefix))
    exp = scn.expect
    fails = [p for p in exp.pings if not p.ok]

    def ping_text(p: PingExpect | TcpExpect, mark: str, style: str) -> Text:
        t = Text(f"{mark} ", style=style)
        port = f" tcp port {p.port}" if isinstance(p, TcpExpect) else ""
        t.append(f"from {prefix}{p.source} to {p.to}{port} ({prefix}{p.netns})")
        if isinstance(p, PingExpect) and p.size:
            t.append(f", {p.size}-byte payload, don't fragment")
        return t

    for ok, title, mark, style in ((True, "should work", "ok  ", "green"),
                                   (False, "should fail", "FAIL", "red")):  # fmt: skip
        every: list[PingExpect | TcpExpect] = [*exp.pings, *exp.tcp]
        stated = [p for p in every if p.ok == ok]
        if stated:
            b = root.add(Text(title, style=f"bold {style}"))
            for p in stated:
                b.add(ping_text(p, mark, style))
    if exp.verdict and exp.verdict != "delivered":
        why = root.add(Text("why", style="bold"))
        where = ""
        if exp.culprit:
            where = f" at {prefix}{exp.culprit.netns}"
            where += f" {exp.culprit.interface}" if exp.culprit.interface else ""
        why.add(Text(f"verdict: {exp.verdict}{where}"))
        if exp.reason:
            why.add(Text(exp.reason))
        if exp.rules:
            why.add(Text("check should report: " + ", ".join(exp.rules)))
    if exp.pings:
        p = fails[0] if fails else exp.pings[0]
        root.add(
            Text(
                f"try: vethtrace lab up {scn.name}; "
                f"vethtrace ping --from {prefix}{p.source} {prefix}{p.netns} {p.to}",
                style="dim",
            )
        )
    return root


def _up(name: str, prefix: str) -> int:
    console = make_console()
    built = labs.up(name, prefix)
    if not built.fresh:
        console.print(
            f"lab {built.name} is already up ({', '.join(built.namespaces)}); nothing changed"
        )
        return int(ExitStatus.OK)
    console.print(Text(f"built lab {built.name}: {', '.join(built.namespaces)}", style="bold"))
    console.print(build_tree(built.scenario, prefix), soft_wrap=False)
    first = next(iter(built.scenario.expect.pings), None)
    if first:
        console.print(
            Text(
                f"try:    vethtrace ping --from {built.ns(first.source)} "
                f"{built.ns(first.netns)} {first.to}"
            )
        )
    env = "" if prefix == labs.DEFAULT_PREFIX else f"VETHTRACE_LAB_PREFIX={prefix} "
    console.print(Text(f"remove: {env}vethtrace lab down {built.name}"))
    return int(ExitStatus.OK)


def _down(name: str | None, prefix: str) -> int:
    console = make_console()
    for st in labs.down(name, prefix):
        console.print(f"removed lab {st.name}: {', '.join(st.namespaces) or 'nothing built'}")
        for note in st.notes:
            console.print(Text(f"note: {note}", style="yellow"))
    return int(ExitStatus.OK)
