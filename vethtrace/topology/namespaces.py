"""Which network namespaces exist, and what to call them.

Three sources, deduplicated by inode: our start-up namespace ("root"), the
names in /run/netns, and /proc/PID/ns/net of every process (that is how
containers hold theirs). A namespace held only by a process gets the
container's name when its runtime's metadata is readable, else
"pid:1234(cmd)". Processes come and go while we look: every read here may
fail, and failures become notes, never exceptions.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from vethtrace import netns

PROC = "/proc"
MAX_PIDS = 64  # pids listed per namespace (a label needs one; a container may have many)


@dataclass
class NsRef:
    """A namespace found but not yet opened: how to reach it and what to call it."""

    inode: int
    name: str
    path: str
    named: bool = True
    pids: list[int] = field(default_factory=list)
    container: str | None = None


def _inode_from_link(link: str) -> int | None:
    # "net:[4026531840]"
    if link.startswith("net:[") and link.endswith("]"):
        return int(link[5:-1])
    return None


def process_namespaces(notes: list[str]) -> dict[int, list[int]]:
    """Inode -> pids (ascending) for every process whose namespace we can read."""
    held: dict[int, list[int]] = {}
    denied: list[int] = []
    me = os.getpid()
    pids = sorted(int(p) for p in os.listdir(PROC) if p.isdigit())
    for pid in pids:
        if pid == me:
            continue
        try:
            inode = _inode_from_link(os.readlink(f"{PROC}/{pid}/ns/net"))
        except PermissionError:
            denied.append(pid)
            continue
        except OSError:  # exited meanwhile, or a kernel thread without ns links
            continue
        if inode is not None:
            held.setdefault(inode, []).append(pid)
    if denied:
        shown = ", ".join(str(p) for p in denied[:5]) + (" ..." if len(denied) > 5 else "")
        notes.append(f"could not read the network namespace of pid {shown} (permission denied)")
    return held


def _comm(pid: int) -> str:
    try:
        with open(f"{PROC}/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


_CGROUP_PATTERNS = [
    ("docker", re.compile(r"docker[-/]([0-9a-f]{64})")),
    ("podman", re.compile(r"libpod-(?:conmon-)?([0-9a-f]{64})")),
    ("containerd", re.compile(r"cri-containerd-([0-9a-f]{64})")),
    ("containerd", re.compile(r"kubepods.*/([0-9a-f]{64})")),
    ("lxc", re.compile(r"lxc\.payload\.([^/\s]+)")),
]


def container_of(pid: int) -> str | None:
    """'docker:web'-style label from the runtime's metadata, None when not a container
    or the metadata is unreadable."""
    try:
        with open(f"{PROC}/{pid}/cgroup") as f:
            found = container_id(f.read())
    except OSError:
        return None
    if found is None:
        return None
    runtime, ident = found
    if runtime == "lxc":
        return f"lxc:{ident}"
    return f"{runtime}:{_runtime_name(runtime, ident) or ident[:12]}"


def container_id(cgroup: str) -> tuple[str, str] | None:
    """(runtime, container id or name) from the text of /proc/PID/cgroup."""
    for runtime, pattern in _CGROUP_PATTERNS:
        m = pattern.search(cgroup)
        if m:
            return runtime, m.group(1)
    return None


def _runtime_name(runtime: str, ident: str) -> str | None:
    try:
        if runtime == "docker":
            with open(f"/var/lib/docker/containers/{ident}/config.v2.json") as f:
                return str(json.load(f).get("Name", "")).lstrip("/") or None
        if runtime == "podman":
            with open("/var/lib/containers/storage/overlay-containers/containers.json") as f:
                for entry in json.load(f):
                    if entry.get("id") == ident and entry.get("names"):
                        return str(entry["names"][0])
        if runtime == "containerd":
            base = "/run/containerd/io.containerd.runtime.v2.task"
            for ns in os.listdir(base):
                path = f"{base}/{ns}/{ident}/config.json"
                if os.path.exists(path):
                    with open(path) as f:
                        ann = json.load(f).get("annotations", {})
                    return ann.get("io.kubernetes.cri.sandbox-name") or ann.get(
                        "io.kubernetes.cri.container-name"
                    )
    except (OSError, ValueError, AttributeError):
        return None
    return None


def enumerate_namespaces(notes: list[str], with_processes: bool = True) -> list[NsRef]:
    """Root first, then /run/netns names (sorted), then process-held ones by pid."""
    refs: dict[int, NsRef] = {}
    refs[netns.ROOT_INODE] = NsRef(netns.ROOT_INODE, netns.ROOT, netns.path_of(netns.ROOT))
    for name in netns.named():
        path = os.path.join(netns.NETNS_RUN_DIR, name)
        try:
            inode = os.stat(path).st_ino
        except OSError as exc:
            notes.append(f"netns {name}: skipped ({exc.strerror})")
            continue
        if inode in refs:
            notes.append(f"netns {name} is the same namespace as {refs[inode].name}")
            continue
        refs[inode] = NsRef(inode, name, path)
    if with_processes:
        for inode, pids in process_namespaces(notes).items():
            if inode in refs:
                if inode != netns.ROOT_INODE:  # everything runs there: not worth listing
                    refs[inode].pids = pids[:MAX_PIDS]
                continue
            pid = pids[0]
            container = container_of(pid)
            label = container or f"pid:{pid}({_comm(pid)})"
            refs[inode] = NsRef(
                inode, label, f"{PROC}/{pid}/ns/net", False, pids[:MAX_PIDS], container
            )
    return list(refs.values())


def lookup(refs: list[NsRef], wanted: str) -> NsRef | None:
    """Find a namespace by the names a user may type: its name/label, 'pid:N', a
    /proc/N/ns/net or /run/netns path, or an inode number."""
    for ref in refs:
        if wanted in (ref.name, ref.path):
            return ref
    m = re.fullmatch(r"pid:(\d+)(\(.*\))?|/proc/(\d+)/ns/net", wanted)
    if m:
        pid = int(m.group(1) or m.group(3))
        try:
            inode = _inode_from_link(os.readlink(f"{PROC}/{pid}/ns/net"))
        except OSError:
            return None
        return next((ref for ref in refs if ref.inode == inode), None)
    if wanted.isdigit():
        for ref in refs:
            if ref.inode == int(wanted):
                return ref
    return None
