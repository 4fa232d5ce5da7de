"""Entering network namespaces safely from threads.

A socket belongs to the namespace of the thread that created it, so every
per-namespace job (netlink dump, sniffer, sender) runs in a thread that
setns()'d into the namespace. Pitfalls this module exists for (see
docs/kernel-notes.md): Python 3.11 has no os.setns; pyroute2's
setns creates a missing namespace unless flags=0; /proc/self shows the thread
group leader, so checks use /proc/thread-self.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from vethtrace.errors import UserError

NETNS_RUN_DIR = "/run/netns"
ROOT = "root"  # the name vethtrace uses for the initial namespace
CLONE_NEWNET = 0x40000000

T = TypeVar("T")

# CDLL(None) is the already-loaded libc; find_library("c") would run ldconfig (~10 ms).
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def named() -> list[str]:
    """Names in /run/netns (sorted); empty when the directory does not exist."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def path_of(name: str) -> str:
    """Path of a namespace file. 'root' means the namespace of PID 1's net, i.e.
    the initial one; we reach it through our own start-up namespace instead,
    because /proc/1/ns/net may be unreadable on hardened machines."""
    if name == ROOT:
        return _ROOT_PATH
    if "/" in name:
        return name  # already a path (/proc/PID/ns/net)
    return os.path.join(NETNS_RUN_DIR, name)


def inode_of(name: str) -> int:
    try:
        return os.stat(path_of(name)).st_ino
    except FileNotFoundError:
        raise UserError(f"no network namespace named {name!r} (see `ip netns list`)") from None


def exists(name: str) -> bool:
    return name == ROOT or os.path.exists(path_of(name))


def current_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


# The namespace the process started in, held open so we can always go back.
_ROOT_FD = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
_ROOT_PATH = f"/proc/{os.getpid()}/fd/{_ROOT_FD}"
ROOT_INODE = os.fstat(_ROOT_FD).st_ino


@contextmanager
def entered(name: str) -> Iterator[int]:
    """Move the *calling thread* into namespace `name` and back; yields its inode.

    Only use from a thread you own (see run_in): the main thread's namespace
    is what other code assumes to be the start-up one.
    """
    try:
        fd = os.open(path_of(name), os.O_RDONLY)
    except FileNotFoundError:
        raise UserError(f"no network namespace named {name!r} (see `ip netns list`)") from None
    try:
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _setns(fd)
            try:
                yield os.fstat(fd).st_ino
            finally:
                _setns(back)
        finally:
            os.close(back)
    finally:
        os.close(fd)


def in_thread(fn: Callable[[], T], name: str = "vethtrace-netns") -> T:
    """Run fn() in a short-lived thread of its own, which may setns() freely (the
    caller's namespace never moves); return its result or re-raise its exception
    in the caller."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def run_in(name: str, fn: Callable[[], T]) -> T:
    """Run fn() in a short-lived thread inside namespace `name`; return its result
    or re-raise its exception in the caller."""

    def inside() -> T:
        with entered(name):
            return fn()

    return in_thread(inside, f"netns:{name}")
