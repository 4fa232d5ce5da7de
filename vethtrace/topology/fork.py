"""Two processes dumping namespaces from one queue (topology discovery's fork).

capture.py decides when (`fork_pays`), hands the namespace positions to a
`PositionQueue` and runs a `Child` that streams its dumps back while the
parent dumps others and decodes (why a process and not a thread: `Child`).
Nothing here knows about netlink.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

# Below this many namespaces a second process costs more (fork, pickling) than it saves.
FORK_MIN_NAMESPACES = 64
CHILD_TIMEOUT = 60.0  # seconds; a child this late is killed and its share dumped here


def fork_pays(n_refs: int) -> bool:
    """Whether to dump in two processes. Only from a process whose only other
    threads are marked `fork_safe` (signals.py's watcher, which blocks in read()
    and takes no lock the child could need): a child forked while other threads
    run (ping's sniffers, watch's UI) could inherit a lock one of them holds and
    never finish."""
    others = [t for t in threading.enumerate() if t is not threading.current_thread()]
    return (
        n_refs >= FORK_MIN_NAMESPACES
        and all(getattr(t, "fork_safe", False) for t in others)
        and len(os.sched_getaffinity(0)) >= 2
    )


class PositionQueue:
    """Namespace positions shared by two processes: a pipe holding each as 4 bytes.
    Whoever is free takes the next one (a 4-byte read is served whole, to one
    reader), so a heavy namespace (a hub with 500 ports) does not leave the
    other process idle, as a fixed split would."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def of(cls, positions: list[int]) -> PositionQueue | None:
        """The queue, or None when the positions do not fit in a pipe (no fork then)."""
        data = b"".join(i.to_bytes(4, "little") for i in positions)
        read, write = os.pipe()
        try:
            if len(data) > 65536:
                fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, len(data))
            os.set_blocking(write, False)
            if os.write(write, data) == len(data):
                return cls(read)
        except OSError:
            pass
        finally:
            os.close(write)  # readers see EOF once the queue is empty
        os.close(read)
        return None

    def __iter__(self) -> Iterator[int]:
        while chunk := os.read(self.fd, 4):
            yield int.from_bytes(chunk, "little")

    def close(self) -> None:
        os.close(self.fd)


class Child:
    """A forked process that runs `work(send)` and streams what it `send`s back
    through a pipe (each object pickled, length-prefixed), so the caller can
    use the first results while the child is still working.

    Why a process: a dump is half kernel time, half Python; two threads only
    take turns on the GIL (measured slower), two processes use both CPUs. The
    child never returns into the caller's code: it leaves through os._exit (no
    atexit handlers, no flushing of inherited buffers, no test runner
    machinery). If it fails, dies or stalls, `completed` stays False and the
    caller does the missing work itself.
    """

    def __init__(self, work: Callable[[Callable[[object], None]], None]) -> None:
        import pickle  # here, not at the top: small runs never fork (~2 ms of start-up)

        self._pickle = pickle
        read, write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child
            status = 1
            try:
                os.close(read)

                def send(obj: object) -> None:
                    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
                    _write_all(write, len(data).to_bytes(4, "little") + data)

                work(send)
                send(_END)
                status = 0
            finally:
                os._exit(status)
        os.close(write)
        self._read = read
        self._buf = bytearray()
        self._eof = False
        self.completed = False  # the end mark arrived: everything sent was received

    def ready(self) -> list[Any]:
        """What the child has sent so far, without waiting."""
        while not self._eof and select.select([self._read], [], [], 0)[0]:
            self._fill()
        return self._records()

    def rest(self) -> Iterator[Any]:
        """Everything else the child sends, until it ends, dies or CHILD_TIMEOUT
        seconds pass (then close() kills it)."""
        deadline = time.monotonic() + CHILD_TIMEOUT
        while True:
            yield from self._records()
            if self._eof or self.completed:
                break
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                break
            self._fill()
        if self.completed and self.reap(kill=False) != 0:
            self.completed = False

    def _fill(self) -> None:
        chunk = os.read(self._read, 1 << 20)
        self._buf += chunk
        self._eof = not chunk

    def _records(self) -> list[Any]:
        out = []
        while len(self._buf) >= 4:
            size = int.from_bytes(self._buf[:4], "little")
            if len(self._buf) < 4 + size:
                break
            obj = self._pickle.loads(self._buf[4 : 4 + size])
            del self._buf[: 4 + size]
            if obj == _END:
                self.completed = True
            else:
                out.append(obj)
        return out

    def reap(self, kill: bool) -> int:
        """Wait for the child, killing it first when `kill`; its exit status."""
        if self.pid <= 0:
            return -1
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        _pid, status = os.waitpid(self.pid, 0)
        self.pid = -1
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        """Never leave the child behind (an error or Ctrl-C here, a timeout)."""
        self.reap(kill=True)
        os.close(self._read)


_END = "end"  # the child's last message


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]

