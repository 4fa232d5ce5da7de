"""TCP listeners a lab keeps running inside its namespaces, so that `[[expect.tcp]]`
can say which connections must be accepted (a hostPort DNAT'd by the CNI portmap
plugin, say) and a test can check them with a plain TCP connect.

A listener is a small Python process started from a thread inside the lab
namespace, in a session of its own so it outlives `vethtrace lab up`. Its pid
and start time are recorded in the lab's state file; `down` signals it only
when /proc still shows that same process (a recycled pid is left alone), so a
lab never kills anything it did not start. It must be stopped before the
namespace is removed: a process holds its namespace alive.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

from vethtrace import netns
from vethtrace.errors import UserError
from vethtrace.lab import state

READY_TIMEOUT = 5.0
# Accepts connections, says who it is, closes; "ready" once listening.
_PROGRAM = """
import os, socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print('ready', flush=True)
fd = os.open(os.devnull, os.O_WRONLY)
os.dup2(fd, 1)
while True:
    c, _ = s.accept()
    try:
        c.sendall(b'vethtrace lab listener\\n')
    except OSError:
        pass
    c.close()
"""


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22: starttime
    except (OSError, IndexError):
        return None


def start(real_ns: str, port: int, st: state.LabState) -> None:
    """Start a listener on 0.0.0.0:port inside `real_ns` and record it."""

    def job() -> subprocess.Popen[str]:
        if netns.current_inode() == netns.ROOT_INODE:
            raise RuntimeError("refusing to start a lab listener in the root namespace")
        return subprocess.Popen(
            [sys.executable, "-c", _PROGRAM, "0.0.0.0", str(port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, text=True, close_fds=True,
        )  # fmt: skip

    proc = netns.run_in(real_ns, job)
    st.listeners.append({"netns": real_ns, "port": port, "pid": proc.pid,
                         "start": _start_time(proc.pid)})  # fmt: skip
    st.save()
    assert proc.stdout is not None and proc.stderr is not None
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "ready":
        err = proc.stderr.read().strip().splitlines() if proc.poll() is not None else []
        raise UserError(
            f"{real_ns}: listener on tcp port {port} did not start"
            + (f": {err[-1]}" if err else "")
        )
    proc.stdout.close()
    proc.stderr.close()


def stop_all(st: state.LabState) -> None:
    """Stop every recorded listener that is still the process we started."""
    for rec in st.listeners:
        pid = int(rec["pid"])
        if rec.get("start") is None or _start_time(pid) != rec["start"]:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break  # our own child (lab built in this process): reaped
            except ChildProcessError:
                if _start_time(pid) != rec["start"]:
                    break
            time.sleep(0.01)
