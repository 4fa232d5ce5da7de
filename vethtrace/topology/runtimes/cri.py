"""containerd and Kubernetes (CRI) containers, from containerd's task bundles.

The CRI API is gRPC over HTTP/2, which the standard library does not speak and
grpcio is a heavy dependency for one question. What we need (which pod or
container a process belongs to) containerd hands to runc in the OCI bundle of
every running task: `<state>/io.containerd.runtime.v2.task/<namespace>/<id>/`
with `config.json` (the OCI spec, whose annotations carry the CRI metadata
`io.kubernetes.cri.sandbox-name`, `-namespace`, `container-type`...) and
`init.pid`. That is an interface between two programs (containerd -> runc), not
a private database, and it only lists what is running. `<state>` is
/run/containerd, or CONTAINERD_STATE (Docker's own containerd keeps it under
its exec-root: `<exec-root>/containerd/daemon`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

TASKS = "io.containerd.runtime.v2.task"
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
SANDBOX_NS = "io.kubernetes.cri.sandbox-namespace"
CONTAINER_NAME = "io.kubernetes.cri.container-name"
CONTAINER_TYPE = "io.kubernetes.cri.container-type"


@dataclass
class Task:
    namespace: str  # containerd namespace (k8s.io, moby, default)
    id: str
    pid: int | None
    annotations: dict[str, str]

    @property
    def pod(self) -> str | None:
        """'NAMESPACE/NAME' of the Kubernetes pod, when CRI made this task."""
        a = self.annotations
        if SANDBOX_NAME in a and SANDBOX_NS in a:
            return f"{a[SANDBOX_NS]}/{a[SANDBOX_NAME]}"
        return None

    @property
    def label(self) -> str:
        """What vethtrace calls the namespace this task holds: the pod for CRI tasks
        (every container of a pod shares the sandbox's namespace), else the task."""
        if self.pod:
            return f"pod:{self.pod}"
        return f"containerd:{self.annotations.get(CONTAINER_NAME) or self.id[:12]}"


def state_dir() -> str:
    return os.environ.get("CONTAINERD_STATE") or "/run/containerd"


def parse_task(namespace: str, ident: str, config: dict[str, Any], pid: int | None) -> Task:
    ann = {str(k): str(v) for k, v in (config.get("annotations") or {}).items()}
    return Task(namespace, ident, pid, ann)


def tasks(state: str | None = None) -> list[Task]:
    """Every running task containerd has a bundle for (unreadable ones skipped)."""
    base = os.path.join(state or state_dir(), TASKS)
    out = []
    try:
        namespaces = sorted(os.listdir(base))
    except OSError:
        return []
    for ns in namespaces:
        try:
            idents = sorted(os.listdir(os.path.join(base, ns)))
        except OSError:
            continue
        for ident in idents:
            bundle = os.path.join(base, ns, ident)
            try:
                with open(os.path.join(bundle, "config.json")) as f:
                    config = json.load(f)
            except (OSError, ValueError):
                continue
            try:
                with open(os.path.join(bundle, "init.pid")) as f:
                    pid: int | None = int(f.read().strip())
            except (OSError, ValueError):
                pid = None
            out.append(parse_task(ns, ident, config, pid))
    return out


def find(found: list[Task], wanted: str, pod: bool) -> Task | None:
    """A pod ('NS/NAME': its sandbox task) or a container (name or id prefix)."""
    for t in found:
        if pod:
            if t.pod == wanted and t.annotations.get(CONTAINER_TYPE, "sandbox") == "sandbox":
                return t
        elif wanted in (t.id, t.annotations.get(CONTAINER_NAME)) or (
            len(wanted) >= 6 and t.id.startswith(wanted)
        ):
            return t
    return None
