"""Ctrl-C at any moment of `vethtrace`'s start-up (imports, argument parsing:
the first ~35 ms) ends it quietly: no traceback from vethtrace's code, exit
130 (or killed by SIGINT before Python has a handler), at most one line.

What this cannot cover, and does not pretend to: a signal while the Python
interpreter itself starts (its `site` import, the console script's `import
re`) is Python's, before any vethtrace code runs; such tracebacks have no
frame in the vethtrace package and are told apart below."""

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
    delays = [*sorted(rng.uniform(0.0, 0.06) for _ in range(60)), 0.3, 0.4]
    seen: list[tuple[float, int, str]] = []
    for d in delays:
        p = subprocess.Popen([str(SCRIPT), "lab", "show", "seed"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(d)
        p.send_signal(signal.SIGINT)
        _out, err = p.communicate(timeout=30)
        seen.append((d, p.returncode, err))
        assert not _ours(err), f"traceback through vethtrace after {d * 1000:.1f} ms:\n{err}"
        if "KeyboardInterrupt" not in err:  # not the interpreter's own start-up
            assert p.returncode in (0, 130, -signal.SIGINT), (d, p.returncode, err)
            assert len(err.splitlines()) <= 1, (d, err)
    # the command itself (well after start-up) answers with 130 and one line
    for d, rc, err in seen[-2:]:
        assert rc in (0, 130), (d, rc, err)
