"""Topology -> Graphviz DOT (and SVG through `dot`).

Namespaces are clusters; bridges and interfaces are nodes; a bridge port is
joined to its bridge inside the cluster; veth pairs are the (blue, bold)
edges that cross clusters. Namespaces outside a -n selection are grey and
dashed. Down interfaces are red; a veth whose peer cannot be found points at
a dashed "?" node.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from typing import BinaryIO

from vethtrace.errors import UserError
from vethtrace.model import IfaceKey, Interface, Topology


def _id(key: IfaceKey) -> str:
    return f"if_{key.netns}_{key.ifindex}"


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _node(iface: Interface, grey: bool) -> str:
    addrs = [a.cidr for a in iface.addresses if not (a.family == 6 and a.scope == "link")]
    lines = [iface.name, iface.kind, *addrs]
    attrs = {"label": "\\n".join(lines)}
    if iface.kind == "bridge":
        attrs["shape"] = "box3d"
        attrs["fillcolor"] = "#fff3c4"
    if iface.bridge_port is not None and addrs:
        attrs["fillcolor"] = "#f6d5f7"  # an address on a bridge port
    if not iface.admin_up or (iface.kind != "loopback" and not iface.carrier):
        attrs["color"] = "#c0392b"
        attrs["penwidth"] = "2"
        attrs["label"] += "\\n" + ("DOWN" if not iface.admin_up else "NO-CARRIER")
    if grey:
        attrs.update(color="#aaaaaa", fontcolor="#888888", fillcolor="#f4f4f4")
    label = attrs.pop("label")
    body = ", ".join(f"{k}={_q(v)}" for k, v in attrs.items())
    return f'    {_id(iface.key)} [label="{label}"{", " + body if body else ""}];'


def dot(topo: Topology) -> str:
    out = [
        "graph vethtrace {",
        '  graph [rankdir=LR, fontname="Helvetica", fontsize=12, compound=true, nodesep=0.3];',
        '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="Helvetica",'
        " fontsize=10];",
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    for ns in topo.namespaces:
        grey = ns.partial
        out.append(f"  subgraph cluster_{ns.inode} {{")
        label = f"{ns.name}\\nnetns {ns.inode}" + ("\\n(outside selection)" if grey else "")
        style = "dashed,rounded" if grey else "rounded,filled"
        color = "#aaaaaa" if grey else "#5d6d7e"
        out.append(
            f'    label="{label}"; style="{style}"; color="{color}"; fillcolor="#f7f9fb";'
            f' fontcolor="{"#888888" if grey else "black"}";'
        )
        shown = ns.interfaces
        if grey:
            shown = [i for i in ns.interfaces if i.peer is not None]
        if not shown:
            out.append(f'    empty_{ns.inode} [label="(no interfaces)", shape=plaintext];')
        for iface in shown:
            out.append(_node(iface, grey))
        by_index = {i.key.ifindex for i in shown}
        for iface in shown:
            if iface.master is not None and iface.master in by_index:
                master = IfaceKey(ns.inode, iface.master)
                # master first: dot ranks left to right along edges, so bridges come
                # first, then their ports, then (across clusters) the veth peers.
                out.append(
                    f'    {_id(master)} -- {_id(iface.key)} [color="#7f8c8d", label="port",'
                    ' fontcolor="#7f8c8d"];'
                )
        for iface in shown:
            link = iface.link
            if link is not None and link.netns == ns.inode and link.ifindex in by_index:
                out.append(
                    f"    {_id(link)} -- {_id(iface.key)}"
                    ' [style=dashed, color="#7f8c8d", label="lower", fontcolor="#7f8c8d"];'
                )
        out.append("  }")
    present = {
        i.key
        for ns in topo.namespaces
        for i in (ns.interfaces if not ns.partial else [j for j in ns.interfaces if j.peer])
    }
    done: set[frozenset[IfaceKey]] = set()
    for ns in topo.namespaces:
        for iface in ns.interfaces:
            if iface.kind != "veth" or iface.key not in present:
                continue
            if iface.peer is not None and iface.peer in present:
                pair = frozenset((iface.key, iface.peer))
                if pair in done:
                    continue
                done.add(pair)
                out.append(
                    f"  {_id(iface.key)} -- {_id(iface.peer)}"
                    ' [color="#2e86de", penwidth=2.5, label="veth"];'
                )
            elif iface.peer is None and not ns.partial:
                ghost = f"ghost_{iface.key.netns}_{iface.key.ifindex}"
                out.append(
                    f'  {ghost} [label="? {iface.peer_state or "unknown"}", style=dashed,'
                    ' color="#c0392b", fontcolor="#c0392b"];'
                )
                out.append(f'  {_id(iface.key)} -- {ghost} [style=dashed, color="#c0392b"];')
    for ns in topo.namespaces:  # lower devices in another namespace (moved macvlans...)
        for iface in ns.interfaces:
            link = iface.link
            if link is not None and link.netns != ns.inode and {iface.key, link} <= present:
                out.append(
                    f"  {_id(link)} -- {_id(iface.key)}"
                    ' [style=dashed, color="#7f8c8d", label="lower", fontcolor="#7f8c8d"];'
                )
    out.append("}")
    return "\n".join(out) + "\n"


def render(dot_text: str, path: str, fmt: str = "svg") -> None:
    """Run Graphviz and write `path`; one clear error when it is missing or fails.

    dot's output is read from its stdout and the file written here: dot's own
    message for an unwritable path ("gvwrite_no_z problem 6") says nothing a
    person can act on, while open() says which path and why."""
    exe = shutil.which("dot")
    if exe is None:
        raise UserError("--svg needs Graphviz's `dot` (apt install graphviz)")
    existed = os.path.lexists(path)
    try:
        out = open(path, "wb")  # noqa: SIM115 - opened first: fail before the work
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    try:
        _run_dot(exe, fmt, dot_text, out, path)
    except BaseException:
        out.close()
        if not existed:  # no empty picture left behind; never remove what was there
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    out.close()


def _run_dot(exe: str, fmt: str, dot_text: str, out: BinaryIO, path: str) -> None:
    try:
        proc = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode(), capture_output=True)
    except OSError as exc:
        raise UserError(f"could not run dot: {exc.strerror}") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise UserError(f"dot failed: {msg[-1] if msg else f'exit {proc.returncode}'}")
    try:
        out.write(proc.stdout)
        out.flush()
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
