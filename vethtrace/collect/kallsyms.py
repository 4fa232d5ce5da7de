"""Kernel text symbols from /proc/kallsyms: the function that freed an skb,
from the caller address kfree_skb/consume_skb report."""

from __future__ import annotations

import bisect
import threading


class Kallsyms:
    """Kernel text symbols from /proc/kallsyms, loaded on first use (or in the
    background), lookups cached."""

    def __init__(self, path: str = "/proc/kallsyms") -> None:
        self.path = path
        # (addresses, names), replaced in one assignment: a lookup racing the
        # background load sees either nothing or the whole table
        self._table: tuple[list[int], list[str]] | None = None
        self._cache: dict[int, str | None] = {}
        self._lock = threading.Lock()

    def _load(self) -> tuple[list[int], list[str]]:
        pairs = []
        with open(self.path) as f:
            for line in f:
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("t", "T"):
                    pairs.append((int(parts[0], 16), parts[2]))
        pairs.sort()
        return [a for a, _ in pairs], [n for _, n in pairs]

    def preload(self) -> None:
        """Load in a background thread so the first drop event does not wait."""
        threading.Thread(target=self._ensure, name="kallsyms", daemon=True).start()

    def _ensure(self) -> tuple[list[int], list[str]]:
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
