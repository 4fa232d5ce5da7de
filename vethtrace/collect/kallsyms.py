"""Kernel text symbols from /proc/kallsyms: the function that freed an skb,
from the caller address kfree_skb/consume_skb report.

Reading and parsing /proc/kallsyms (~5 MB, ~120 k text symbols) takes
0.1-0.25 s, most of it holding the GIL, and the first drop or consume event
waits for it: it was the largest part of a cached `trace`'s time to its first
event (issue #18). So the parsed table is kept on disk (the program cache's
directory, mode 0600: it holds kernel addresses), keyed by the boot (KASLR
moves everything at every boot) and the loaded modules with their addresses;
reading it back takes a few milliseconds. BPF programs loaded since (their
`bpf_prog_…` symbols) are not in a kept table, as they are not in one read
at start: they never call kfree_skb themselves.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import os
import threading
from array import array
from collections.abc import Sequence
from pathlib import Path

KALLSYMS = "/proc/kallsyms"


class _Names:
    """A kept table's names, decoded on lookup: making 120 k strings up front
    would cost more than reading the file."""

    def __init__(self, blob: bytes, offsets: array[int]) -> None:
        self._blob, self._offsets = blob, offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self._blob[self._offsets[i] : self._offsets[i + 1]].decode()


Table = tuple[Sequence[int], "Sequence[str] | _Names"]  # addresses (sorted), names


class Kallsyms:
    """Kernel text symbols from /proc/kallsyms, loaded on first use (or in the
    background), lookups cached. `cache_dir`: where the parsed table is kept
    (default: the program cache's directory for the kernel's own table, none
    for another file)."""

    def __init__(self, path: str = KALLSYMS, cache_dir: Path | None = None) -> None:
        self.path = path
        if cache_dir is None and path == KALLSYMS:
            from vethtrace.collect.kcache import CACHE_DIR

            cache_dir = CACHE_DIR
        self.cache_dir = cache_dir
        # (addresses, names), replaced in one assignment: a lookup racing the
        # background load sees either nothing or the whole table
        self._table: Table | None = None
        self._cache: dict[int, str | None] = {}
        self._lock = threading.Lock()

    def _read(self) -> Table:
        pairs = []
        with open(self.path) as f:
            for line in f:
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("t", "T"):
                    pairs.append((int(parts[0], 16), parts[2]))
        pairs.sort()
        return [a for a, _ in pairs], [n for _, n in pairs]

    def _load(self) -> Table:
        kept = self._kept()
        if kept is None:
            return self._read()
        try:
            return _unpack(kept.read_bytes())
        except (OSError, ValueError):
            table = self._read()
            with contextlib.suppress(OSError):
                _keep(kept, table)
            return table

    def _kept(self) -> Path | None:
        """The file the table is kept in for this boot and these modules."""
        if self.cache_dir is None:
            return None
        h = hashlib.sha1()
        try:
            h.update(Path("/proc/sys/kernel/random/boot_id").read_bytes())
            try:
                modules = Path("/proc/modules").read_text().splitlines()
            except FileNotFoundError:  # a kernel without modules: its text is fixed
                modules = []
            for line in modules:
                fields = line.split()  # name size refcount deps state address
                h.update(f"{fields[0]} {fields[-1]}\n".encode())  # not the refcount
        except (OSError, IndexError):
            return None
        return self.cache_dir / f"kallsyms-{h.hexdigest()[:16]}.bin"

    def preload(self) -> None:
        """Load in a background thread so the first drop event does not wait."""
        threading.Thread(target=self._ensure, name="kallsyms", daemon=True).start()

    def _ensure(self) -> Table:
        with self._lock:
            if self._table is None:
                self._table = self._load()
            return self._table

    def name(self, addr: int) -> str | None:
        if not addr:
            return None
        if addr in self._cache:
            return self._cache[addr]
        addrs, names = self._table or self._ensure()
        i = bisect.bisect_right(addrs, addr) - 1
        sym = names[i] if i >= 0 and addrs[i] else None
        self._cache[addr] = sym
        return sym


def _unpack(data: bytes) -> Table:
    """count n (8 bytes), n addresses (8 bytes each), n + 1 offsets of the
    names (4 bytes each) into the names that follow, as UTF-8."""
    count = int.from_bytes(data[:8], "little")
    addrs, offsets = array("Q"), array("I")
    addrs.frombytes(data[8 : 8 + 8 * count])
    start = 8 + 8 * count
    offsets.frombytes(data[start : start + 4 * (count + 1)])
    blob = data[start + 4 * (count + 1) :]
    if len(addrs) != count or len(offsets) != count + 1 or offsets[-1] != len(blob):
        raise ValueError("truncated kallsyms table")
    return addrs, _Names(blob, offsets)


def _keep(path: Path, table: Table) -> None:
    """Write the table readable by root only, whole or not at all, and drop the
    tables of other boots and module sets."""
    addrs, names = table
    encoded = [names[i].encode() for i in range(len(names))]
    offsets = array("I", [0])
    for name in encoded:
        offsets.append(offsets[-1] + len(name))
    data = len(addrs).to_bytes(8, "little") + array("Q", addrs).tobytes()
    data += offsets.tobytes() + b"".join(encoded)
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob("kallsyms-*.bin"):
        with contextlib.suppress(OSError):
            old.unlink()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)
