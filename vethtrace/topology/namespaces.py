"""Which network namespaces exist, and what to call them.

Three sources, deduplicated by inode: our start-up namespace ("root"), the
names in /run/netns, and /proc/PID/ns/net of every process (that is how
containers hold theirs). A namespace held only by a process gets the
container's name when its runtime answers (vethtrace.topology.runtimes asks
it), else "pid:1234(cmd)". Processes come and go while we look: every read
here may fail, and failures become notes, never exceptions.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from vethtrace import netns
from vethtrace.topology.runtimes import container_id, label_namespaces, split

__all__ = ["NsRef", "container_id", "enumerate_namespaces", "lookup"]

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
        held = process_namespaces(notes)
        containers = label_namespaces(
            {i: p for i, p in held.items() if i != netns.ROOT_INODE}, notes
        )
        for inode, pids in held.items():
            if inode in refs:
                if inode != netns.ROOT_INODE:  # everything runs there: not worth listing
                    refs[inode].pids = pids[:MAX_PIDS]
                if inode in containers:  # a runtime's bind mount (Podman's netns-UUID)
                    ref = refs[inode]
                    ref.name, ref.container, ref.named = containers[inode], containers[inode], False
                continue
            pid = pids[0]
            container = containers.get(inode)
            label = container or f"pid:{pid}({_comm(pid)})"
            refs[inode] = NsRef(
                inode, label, f"{PROC}/{pid}/ns/net", False, pids[:MAX_PIDS], container
            )
    return list(refs.values())


def lookup(refs: list[NsRef], wanted: str) -> NsRef | None:
    """Find a namespace by the names a user may type: its name/label, 'pid:N', a
    /proc/N/ns/net or /run/netns path, or an inode number."""
    for ref in refs:
        if wanted in (ref.name, ref.path) or ref.path == os.path.join(netns.NETNS_RUN_DIR, wanted):
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
    if split(wanted) is not None:  # docker:ID-prefix, pod:NS/NAME...: ask the runtime
        inode = os.stat(netns.path_of(wanted)).st_ino
        return next((ref for ref in refs if ref.inode == inode), None)
    return None
