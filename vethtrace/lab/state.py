"""What each lab built, on disk under /run/vethtrace/labs/ (tmpfs: gone at reboot, as
the namespaces are).

A namespace's name is recorded BEFORE it is created, so `down` can remove
exactly what was built even when `up` died half-way (crash, SIGKILL) — and
never a namespace that someone else made with a similar name.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_DIR = Path(os.environ.get("VETHTRACE_LAB_STATE", "/run/vethtrace/labs"))


@dataclass
class LabState:
    name: str  # scenario name
    prefix: str
    namespaces: list[str] = field(default_factory=list)  # real names, creation order
    complete: bool = False  # up finished
    source: str = ""  # scenario file it was built from
    cni: list[dict[str, Any]] = field(default_factory=list)  # CNI attachments (lab/cni.py)
    listeners: list[dict[str, Any]] = field(default_factory=list)  # lab/listen.py
    docker: dict[str, Any] = field(default_factory=dict)  # the lab's dockerd (lab/docker.py)
    notes: list[str] = field(default_factory=list)  # what went wrong tearing down (not saved)

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.prefix}{self.name}.json"

    def save(self) -> None:
        """Write atomically, so a crash never leaves half a state file."""
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        data = {k: v for k, v in asdict(self).items() if k != "notes"}
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def all_states() -> list[LabState]:
    """Every recorded lab (any prefix); unreadable files are skipped."""
    states = []
    for path in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            states.append(
                LabState(
                    name=str(data["name"]),
                    prefix=str(data["prefix"]),
                    namespaces=[str(n) for n in data.get("namespaces", [])],
                    complete=bool(data.get("complete", False)),
                    source=str(data.get("source", "")),
                    cni=[dict(c) for c in data.get("cni", [])],
                    listeners=[dict(c) for c in data.get("listeners", [])],
                    docker=dict(data.get("docker") or {}),
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return states


def find(name: str, prefix: str) -> LabState | None:
    for st in all_states():
        if st.name == name and st.prefix == prefix:
            return st
    return None


def owner_of(netns: str) -> LabState | None:
    """The recorded lab that built namespace `netns`, if any."""
    for st in all_states():
        if netns in st.namespaces:
            return st
    return None
