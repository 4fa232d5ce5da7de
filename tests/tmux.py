"""Driving a terminal program the way a person would: tmux runs it, capture-pane
reads the screen. Shared by the watch tests and bench/watch_bench.py."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable


class Tmux:
    """One detached session on a private server, so nothing else's tmux is touched."""

    def __init__(self, socket: str, command: str, width: int = 120, height: int = 40) -> None:
        self.socket = socket
        self.tmux("new-session", "-d", "-s", "w", "-x", str(width), "-y", str(height), command)

    def tmux(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "w")

    def wait_for(self, test: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if test(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{screen}")

    def children(self) -> list[tuple[int, str]]:
        """(pid, command) of the processes the pane's shell runs (-ww: whole command
        lines, which a checkout in a long path would otherwise cut at 80 columns)."""
        shell = self.tmux("list-panes", "-t", "w", "-F", "#{pane_pid}").strip()
        out = subprocess.run(
            ["ps", "-ww", "-o", "pid=,args=", "--ppid", shell], capture_output=True, text=True
        )
        rows = [line.strip().split(None, 1) for line in out.stdout.splitlines() if line.strip()]
        return [(int(r[0]), r[1] if len(r) > 1 else "") for r in rows]

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)
        # tmux leaves the socket file of a private server behind
        tmpdir = os.environ.get("TMUX_TMPDIR", "/tmp")
        path = os.path.join(tmpdir, f"tmux-{os.getuid()}", self.socket)
        with contextlib.suppress(OSError):
            os.unlink(path)
