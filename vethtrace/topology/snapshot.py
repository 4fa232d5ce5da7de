"""Topology <-> JSON text: the `topo --json` output, the snapshot tests and
recordings load. Field names are model.py's and stable."""

from __future__ import annotations

import json

from vethtrace.model import Topology, from_dict, to_dict

FORMAT = "vethtrace-topology"
VERSION = 1


def dumps(topo: Topology, indent: int | None = 2) -> str:
    doc = {"format": FORMAT, "version": VERSION, **to_dict(topo)}
    return json.dumps(doc, indent=indent, ensure_ascii=False)


def loads(text: str) -> Topology:
    return from_dict(Topology, json.loads(text))


def save(topo: Topology, path: str) -> None:
    with open(path, "w") as f:
        f.write(dumps(topo) + "\n")


def load(path: str) -> Topology:
    with open(path) as f:
        return loads(f.read())
