"""How `vethtrace lab` shows scenarios: the list, what one builds, what it should show.

`build_tree` is also the demo's picture of the lab it builds. Everything here
is a function of a parsed Scenario (and the namespace prefix, so names are
the real ones), never of the live system.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from vethtrace.lab import DEFAULT_PREFIX, BuiltLab
from vethtrace.lab.scenario import Link, PingExpect, Scenario, TcpExpect


def scenario_table(rows: list[tuple[Path, Scenario | str]], up: set[str]) -> Table:
    """`lab list`: one row per scenario file (a parsed scenario, or the error
    that kept it from loading), marked when it is up."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("NAME", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("SUMMARY")
    for path, scn in rows:
        if isinstance(scn, str):
            table.add_row(path.stem, Text("invalid", style="red"), escape(scn))
            continue
        kind = Text("broken", style="yellow") if scn.broken else Text("working", style="green")
        if scn.name in up:
            kind.append(" (up)", style="bold")
        table.add_row(scn.name, kind, escape(scn.summary))
    return table


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
        if scn.docker is not None and scn.docker.netns == ns.name:
            _docker_branch(branch, scn)
    return tree


def _docker_branch(branch: Tree, scn: Scenario) -> None:
    """The lab's dockerd in its namespace: networks, then containers."""
    assert scn.docker is not None
    d = branch.add(Text("dockerd (the lab's own)", style="bold cyan"))
    for net in scn.docker.networks:
        line = f"network {net.name}: bridge {net.bridge} {net.subnet}"
        line += ", internal" if net.internal else ""
        line += ", icc off" if not net.icc else ""
        d.add(Text(line, style="cyan"))
    for box in scn.docker.containers:
        t = Text(box.netns, style="bold")
        t.append(": " + ", ".join(f"{ip} on {net}" for net, ip in box.networks.items()))
        if box.publish:
            t.append(", publishes " + " ".join(box.publish))
        t.append(f", runs {' '.join(box.command)}", style="dim")
        if not box.running:
            t.append(", stopped", style="red")
        d.add(t)


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
        t.append(f"from {_real(scn, prefix, p.source)} to {p.to}{port} "
                 f"({_real(scn, prefix, p.netns)})")  # fmt: skip
        if isinstance(p, PingExpect) and p.size:
            t.append(f", {p.size}-byte payload, don't fragment")
        return t

    stated: list[PingExpect | TcpExpect] = [*exp.pings, *exp.tcp]
    for ok, title, mark, style in ((True, "should work", "ok  ", "green"),
                                   (False, "should fail", "FAIL", "red")):  # fmt: skip
        these = [p for p in stated if p.ok == ok]
        if these:
            b = root.add(Text(title, style=f"bold {style}"))
            for p in these:
                b.add(ping_text(p, mark, style))
    if exp.verdict and exp.verdict != "delivered":
        why = root.add(Text("why", style="bold"))
        where = ""
        if exp.culprit:
            where = f" at {_real(scn, prefix, exp.culprit.netns)}"
            where += f" {exp.culprit.interface}" if exp.culprit.interface else ""
        why.add(Text(f"verdict: {exp.verdict}{where}"))
        if exp.reason:
            why.add(Text(exp.reason))
        if exp.rules:
            why.add(Text("check should report: " + ", ".join(exp.rules)))
    if exp.pings:
        p = fails[0] if fails else exp.pings[0]
        docker_ = " --docker-host <the socket lab up prints>" if scn.docker else ""
        root.add(
            Text(
                f"try: vethtrace lab up {scn.name}; vethtrace{docker_} ping --from "
                f"{_real(scn, prefix, p.source)} {_real(scn, prefix, p.netns)} {p.to}",
                style="dim",
            )
        )
    return root


def _real(scn: Scenario, prefix: str, short: str) -> str:
    """What a scenario's namespace is called once built (lab containers keep docker:NAME)."""
    return short if scn.docker and scn.docker.container(short) else prefix + short


def show_built(console: Console, built: BuiltLab, prefix: str) -> None:
    """`lab up`: what was built (or that nothing changed), a ping to try, how to remove it."""
    if not built.fresh:
        console.print(
            f"lab {built.name} is already up ({', '.join(built.namespaces)}); nothing changed"
        )
        return
    console.print(Text(f"built lab {built.name}: {', '.join(built.namespaces)}", style="bold"))
    console.print(build_tree(built.scenario, prefix), soft_wrap=False)
    first = next(iter(built.scenario.expect.pings), None)
    host = f" --docker-host {built.docker_host}" if built.docker_host else ""
    if built.docker_host:
        console.print(Text(f"docker: export DOCKER_HOST={built.docker_host}"))
    if first:
        console.print(
            Text(
                f"try:    vethtrace{host} ping --from {built.ns(first.source)} "
                f"{built.ns(first.netns)} {first.to}"
            )
        )
    env = "" if prefix == DEFAULT_PREFIX else f"VETHTRACE_LAB_PREFIX={prefix} "
    console.print(Text(f"remove: {env}vethtrace lab down {built.name}"))
