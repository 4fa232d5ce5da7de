"""Ctrl-C at any moment of `vethtrace`'s start-up (imports, argument parsing:
the first ~35 ms) ends it quietly: no traceback from vethtrace's code, exit
130 (or killed by SIGINT before Python has a handler), at most one line.

What this cannot cover, and does not pretend to: a signal while the Python
interpreter itself starts (its `site` import, the console script's `import
re`) is Python's, before any vethtrace code runs; such tracebacks have no
frame in the vethtrace package and are told apart below.

"Well after start-up" is not a fixed delay: on a loaded machine the
interpreter alone took more than 0.3 s to start (the old 0.3/0.4 s cases got
Python's own KeyboardInterrupt). The late signals are sent once the command's
own handlers are in place, which /proc/PID/status shows: SIGTERM caught
(signals.install; the interpreter's start-up catches SIGINT only)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

PACKAGE = str(Path(__file__).resolve().parents[2] / "vethtrace") + "/"
SCRIPT = Path(sys.executable).parent / "vethtrace"


def _ours(stderr: str) -> bool:
    """A traceback through vethtrace's own code (not the interpreter's start)."""
    return "Traceback" in stderr and PACKAGE in stderr


def test_sigint_during_start_up_is_quiet() -> None:
    rng = random.Random(20)
    delays = sorted(rng.uniform(0.0, 0.06) for _ in range(60))
    seen: list[tuple[float, int, str]] = []
    # (delay, counted from the command's handlers being in place rather than the spawn)
    cases = [*((d, False) for d in delays), (0.0, True), (0.1, True)]
    for d, after_handlers in cases:
        p = subprocess.Popen([str(SCRIPT), "lab", "show", "seed"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
        if after_handlers:
            _wait_handlers(p)
        time.sleep(d)
        p.send_signal(signal.SIGINT)
        _out, err = p.communicate(timeout=30)
        seen.append((d, p.returncode, err))
        assert not _ours(err), f"traceback through vethtrace after {d * 1000:.1f} ms:\n{err}"
        if "KeyboardInterrupt" not in err:  # not the interpreter's own start-up
            assert p.returncode in (0, 130, -signal.SIGINT), (d, p.returncode, err)
            assert len(err.splitlines()) <= 1, (d, err)
    # the command itself (past start-up) answers with 130 and one line (0: it had
    # already finished, its result final: late signals are ignored)
    for d, rc, err in seen[-2:]:
        assert rc in (0, 130), (d, rc, err)


def _wait_handlers(p: subprocess.Popen[str], timeout: float = 60.0) -> None:
    """Until cli.main has installed the command's handlers (or it has ended)."""
    deadline = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{p.pid}/status").read_text()
        except FileNotFoundError:
            return
        caught = next(int(ln.split()[1], 16) for ln in status.splitlines()
                      if ln.startswith("SigCgt:"))  # fmt: skip
        if caught >> (signal.SIGTERM - 1) & 1:
            return
        time.sleep(0.002)
    assert p.poll() is not None or time.monotonic() < deadline, "handlers never installed"
