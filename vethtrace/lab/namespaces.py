"""Creating and removing named network namespaces, the way `ip netns add/del` does,
without shelling out: a throw-away thread unshares a new netns and bind-mounts
it on /run/netns/NAME. Only the thread moves, never the process, so nothing
else in vethtrace ever runs in a half-made namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading

from vethtrace.netns import CLONE_NEWNET, NETNS_RUN_DIR

MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_rundir_ready = False


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prepare_rundir() -> None:
    """Make /run/netns a shared mount point (as iproute2 does) so namespace mounts
    are seen by every mount namespace that shares it."""
    global _rundir_ready
    if _rundir_ready:
        return
    os.makedirs(NETNS_RUN_DIR, exist_ok=True)
    rundir = NETNS_RUN_DIR.encode()
    if _libc.mount(b"", rundir, b"none", MS_SHARED | MS_REC, None) != 0:
        if ctypes.get_errno() != errno.EINVAL:
            _check(-1, f"mount --make-shared {NETNS_RUN_DIR}")
        _check(
            _libc.mount(rundir, rundir, b"none", MS_BIND | MS_REC, None),
            f"bind-mount {NETNS_RUN_DIR}",
        )
        _check(
            _libc.mount(b"", rundir, b"none", MS_SHARED | MS_REC, None),
            f"mount --make-shared {NETNS_RUN_DIR}",
        )
    _rundir_ready = True


def create(name: str) -> None:
    """Create /run/netns/NAME; FileExistsError when the name is taken."""
    _prepare_rundir()
    path = os.path.join(NETNS_RUN_DIR, name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))
    box: list[BaseException] = []

    def unshare_and_bind() -> None:
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            _check(
                _libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", MS_BIND, None),
                f"bind-mount {path}",
            )
        except BaseException as exc:
            box.append(exc)
        finally:
            _libc.setns(back, CLONE_NEWNET)
            os.close(back)

    t = threading.Thread(target=unshare_and_bind, name=f"netns-create:{name}", daemon=True)
    t.start()
    t.join()
    if box:
        os.unlink(path)
        raise box[0]


def remove(name: str) -> bool:
    """Unmount and unlink /run/netns/NAME; the kernel then destroys the namespace and
    every interface in it (veth peers elsewhere go with them). False if absent."""
    path = os.path.join(NETNS_RUN_DIR, name)
    if not os.path.lexists(path):
        return False
    _libc.umount2(path.encode(), MNT_DETACH)  # may fail if never mounted: unlink anyway
    os.unlink(path)
    return True
