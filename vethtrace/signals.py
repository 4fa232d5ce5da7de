"""How the vethtrace command is interrupted: Ctrl-C (SIGINT) and SIGTERM alike.

Python's default turns SIGINT into KeyboardInterrupt and lets SIGTERM kill
the process outright, skipping every `finally`: a half-built lab stays, a
recording has no end, a pcapng is never written. So the command turns both
into `Interrupted` (a KeyboardInterrupt, so every `except BaseException` /
`finally` / ExitStack that already cleans up for Ctrl-C does it for SIGTERM
too). Only the first signal interrupts: later ones are ignored while that
clean-up runs, so a second Ctrl-C cannot cut a rollback in half.

While the main thread is inside a long C call (bcc compiling the probes,
~1 s) Python runs no signal handler, so nothing would say the signal was
seen. A watcher thread reads the wakeup fd (written by the C-level handler
at once) and, when the command is still running 0.2 s later, says
"interrupted, stopping…" itself. Either it or cli.main prints that one line,
never both.

`hold()` is for work that is complete and must be kept (a built lab), and
for the end of the command (its result is final): from then on SIGINT and
SIGTERM are ignored and the process ends normally.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
ANNOUNCE_AFTER_S = 0.2


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `signum` says which (exit status 128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def status(self) -> int:
        return 128 + self.signum


def interruption_in(exc: BaseException) -> Interrupted | None:
    """The Interrupted an exception was raised from or during, if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, Interrupted):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


class _State:
    def __init__(self, command: str) -> None:
        self.command = command
        self.lock = threading.Lock()
        self.announced = False
        self.signum: int | None = None  # set by the handler: the command is interrupted
        self.seen: int | None = None  # set by the watcher: a signal arrived


_state: _State | None = None


def announce(state: _State | None = None, slow: bool = False) -> None:
    """Print the one 'interrupted' line (once, whoever comes first)."""
    st = state or _state
    if st is None:
        return
    with st.lock:
        if st.announced:
            return
        st.announced = True
    what = "terminated" if (st.signum or st.seen) == signal.SIGTERM else "interrupted"
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"vethtrace {st.command}: {what}" + (", stopping…\n" if slow else "\n"))
        sys.stderr.flush()


def install(command: str = "") -> Callable[[], None]:
    """Install the handlers for the command's process; returns a function that
    puts the previous handlers back (for callers of cli.main in-process)."""
    global _state
    st = _state = _State(command or "")
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def handler(signum: int, frame: FrameType | None) -> None:
        if st.signum is not None:
            return  # already stopping: let the clean-up finish
        st.signum = signum
        raise Interrupted(signum)

    r, w = os.pipe()
    os.set_blocking(w, False)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(st, r, stop), daemon=True, name="signals")
    # discovery may still fork beside it (topology/fork.py): it only blocks in read()
    # and its locks (st.lock, stderr's) are nothing the dumping child touches
    watcher.fork_safe = True  # type: ignore[attr-defined]
    watcher.start()
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    previous_hook = sys.unraisablehook

    def unraisable(u: Any) -> None:
        # The handler ran inside a weakref callback or __del__, where Python
        # cannot raise ("Exception ignored in ..."): the interruption would be
        # lost. Re-arm and send the signal again, to land somewhere it can raise.
        if isinstance(u.exc_value, Interrupted):
            signum, st.signum = u.exc_value.signum, None
            threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()
            return
        previous_hook(u)

    sys.unraisablehook = unraisable
    for s in SIGNALS:  # last: from here on a signal interrupts the command
        signal.signal(s, handler)

    def restore() -> None:
        stop.set()
        signal.set_wakeup_fd(old_fd)
        with contextlib.suppress(OSError):
            os.write(w, b"\0")  # wake the watcher so it ends
        for s, h in previous.items():
            signal.signal(s, h)
        sys.unraisablehook = previous_hook
        with contextlib.suppress(OSError):
            os.close(w)

    return restore


def _watch(st: _State, r: int, stop: threading.Event) -> None:
    numbers = {int(s) for s in SIGNALS}
    try:
        while True:
            data = os.read(r, 64)
            if stop.is_set() or not data:
                return
            seen = next((b for b in data if b in numbers), None)
            if seen is None:
                continue
            st.seen = seen
            # The main thread may be inside a C call (a compile): if the command
            # has not finished soon, say that the signal was heard.
            if not stop.wait(ANNOUNCE_AFTER_S):
                announce(st, slow=True)
    except OSError:
        return
    finally:
        with contextlib.suppress(OSError):
            os.close(r)


def hold() -> None:
    """Keep what is done (a built lab): SIGINT/SIGTERM are ignored for the rest
    of the process, which finishes normally. (Ignored, not blocked: a blocked
    signal would still reach another thread, and Python runs its handler.)"""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
