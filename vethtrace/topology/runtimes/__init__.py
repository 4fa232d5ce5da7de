"""Container runtimes: what to call a namespace a container holds, and where the
namespace of a container the user names is.

Names a user may type wherever vethtrace takes NETNS, and that it prints:
`docker:NAME|ID`, `podman:NAME|ID`, `containerd:NAME|ID`, `pod:NAMESPACE/NAME`
(a Kubernetes pod, through containerd's CRI metadata) and `pid:N`.

Docker and Podman are asked through their API socket (api.py, docker.py);
containerd/CRI through its task bundles (cri.py explains why not gRPC). Which
runtime owns a process is read from /proc/PID/cgroup (every runtime puts the
container id in the cgroup path); when the runtime cannot be asked, the
namespace is called by that id (`docker:7a5a3aa49f81`) and a note says why.
"""

from __future__ import annotations

import os
import re

from vethtrace.errors import UserError
from vethtrace.model import Topology
from vethtrace.topology.runtimes import cri
from vethtrace.topology.runtimes import docker as dockerapi
from vethtrace.topology.runtimes.api import DOCKER, PODMAN, Client, Endpoint, NotFound

SCHEMES = ("docker", "podman", "containerd", "pod", "pid")
ENDPOINTS = {"docker": DOCKER, "podman": PODMAN}

_CGROUP_PATTERNS = [
    ("docker", re.compile(r"docker[-/]([0-9a-f]{64})")),
    ("podman", re.compile(r"libpod-(?:conmon-)?([0-9a-f]{64})")),
    ("containerd", re.compile(r"cri-containerd-([0-9a-f]{64})")),
    ("containerd", re.compile(r"kubepods.*/([0-9a-f]{64})")),
    ("lxc", re.compile(r"lxc\.payload\.([^/\s]+)")),
]


def container_id(cgroup: str) -> tuple[str, str] | None:
    """(runtime, container id or name) from the text of /proc/PID/cgroup."""
    for runtime, pattern in _CGROUP_PATTERNS:
        m = pattern.search(cgroup)
        if m:
            return runtime, m.group(1)
    return None


def _cgroup_of(pid: int) -> tuple[str, str] | None:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return container_id(f.read())
    except OSError:
        return None


def split(name: str) -> tuple[str, str] | None:
    """('docker', 'web') for 'docker:web'; None when not a runtime name."""
    scheme, sep, rest = name.partition(":")
    return (scheme, rest) if sep and scheme in SCHEMES and rest else None


# --- a name the user typed -> a namespace path -------------------------------------


def netns_path(name: str) -> str:
    """/proc/PID/ns/net of the container, pod or process `name` names; one-line
    UserError for an unknown or stopped container or a runtime that does not answer."""
    found = split(name)
    if found is None:
        raise UserError(f"no network namespace named {name!r} (see `ip netns list`)")
    scheme, ref = found
    if scheme == "pid":
        m = re.fullmatch(r"(\d+)(\(.*\))?", ref)
        pid = int(m.group(1)) if m else -1
        if pid <= 0 or not os.path.exists(f"/proc/{pid}/ns/net"):
            raise UserError(f"{name}: no such process")
        return f"/proc/{pid}/ns/net"
    if scheme in ENDPOINTS:
        return _api_path(ENDPOINTS[scheme], ref)
    task = cri.find(cri.tasks(), ref, pod=scheme == "pod")
    what = "running pod" if scheme == "pod" else "running containerd container"
    if task is None or task.pid is None:
        where = os.path.join(cri.state_dir(), cri.TASKS)
        raise UserError(f"{name}: no {what} {ref!r} (containerd tasks under {where})")
    return f"/proc/{task.pid}/ns/net"


def _api_path(endpoint: Endpoint, ref: str) -> str:
    rt = endpoint.runtime
    try:
        c = dockerapi.inspect(Client(endpoint), ref)
    except NotFound:
        raise UserError(f"{rt}: no container named {ref!r} (see `{rt} ps -a`)") from None
    if not c.running or c.pid is None:
        raise UserError(
            f"{rt}: container {c.name} is not running ({c.status}); "
            f"it has no network namespace until `{rt} start {c.name}`"
        )
    return f"/proc/{c.pid}/ns/net"


# --- a namespace a process holds -> its label ---------------------------------------


def label_namespaces(held: dict[int, list[int]], notes: list[str]) -> dict[int, str]:
    """inode -> 'docker:web' / 'pod:default/nginx' / ... for namespaces held by
    container processes (the others are left out). Each runtime is asked once."""
    owners: dict[int, tuple[str, str]] = {}
    for inode, pids in held.items():
        for pid in pids[:4]:  # the first may be a helper (conmon, a shim's child)
            found = _cgroup_of(pid)
            if found is not None:
                owners[inode] = found
                break
    wanted = {rt for rt, _ in owners.values()}
    names: dict[str, dict[str, str]] = {}  # runtime -> {container id: label}
    for rt in wanted & set(ENDPOINTS):
        endpoint = ENDPOINTS[rt]
        if endpoint.socket_absent:
            # a daemon of its own elsewhere (--host): short, it is only a naming note
            notes.append(f"{rt}: no API at {endpoint.url}: its containers are named by cgroup id")
            continue
        try:
            listing = dockerapi.parse_list(dockerapi.running(Client(endpoint)))
        except UserError as exc:
            notes.append(f"{exc}: {rt} containers are named by their cgroup id")
            continue
        names[rt] = {cid: f"{rt}:{n}" for cid, n in listing.items()}
    if "containerd" in wanted:
        names["containerd"] = {t.id: t.label for t in cri.tasks()}
        if not names["containerd"]:
            notes.append(
                f"containerd: no task bundles under {os.path.join(cri.state_dir(), cri.TASKS)}"
                " (set CONTAINERD_STATE): containers are named by their cgroup id"
            )
    labels = {}
    for inode, (rt, ident) in owners.items():
        if rt == "lxc":
            labels[inode] = f"lxc:{ident}"
            continue
        labels[inode] = names.get(rt, {}).get(ident) or f"{rt}:{ident[:12]}"
    return labels


# --- what a daemon's networks are meant to do -------------------------------------


def annotate(topo: Topology) -> None:
    """Attach each reachable Docker/Podman daemon's networks to the namespace the
    daemon runs in (found by asking the socket's kernel who serves it).

    Asked when the runtime's socket exists or was named (DOCKER_HOST,
    CONTAINER_HOST); a runtime that does not answer adds a note, never an error:
    topology stays useful without it."""
    for rt, endpoint in ENDPOINTS.items():
        url = endpoint.url
        if endpoint.socket_absent:
            if endpoint.explicit:
                topo.notes.append(f"{rt}: no API socket at {url}")
            continue
        client = Client(endpoint)
        try:
            nets = dockerapi.networks(client)
        except UserError as exc:
            topo.notes.append(f"{exc}: its networks are not described")
            continue
        pid = client.peer_pid()
        inode = _inode_of_pid(pid) if pid else None
        ns = topo.netns(inode) if inode else None
        if ns is None:
            if pid is None or inode is None:
                topo.notes.append(f"{rt}: cannot tell which namespace the daemon at {url} is in")
            continue  # the daemon's namespace is outside the selection
        ns.runtime_networks = [n for n in nets if n.driver in ("bridge", "macvlan", "ipvlan")]


def _inode_of_pid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None
