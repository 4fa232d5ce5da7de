"""Which BPF programs a process holds and which the kernel still has loaded:
the tests' proof that vethtrace leaves nothing attached after it ends."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable


def held_prog_ids(pid: int) -> set[int]:
    """BPF program ids a process holds, from its fds' fdinfo (Debian 12's bpftool
    cannot show the owning pids)."""
    ids: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:  # the process is gone
        return ids
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def loaded_prog_ids() -> set[int]:
    """What `bpftool prog show` lists: every program loaded in the kernel."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return {p["id"] for p in json.loads(out.stdout or "[]")}


def settle(check: Callable[[], bool], timeout: float = 8.0) -> bool:
    """Wait until `check()` holds (the kernel frees programs a moment after the
    last fd closes); its final answer after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.1)
    return check()
