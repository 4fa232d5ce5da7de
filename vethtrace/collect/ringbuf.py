"""Read a BPF ring buffer straight from its shared pages.

bcc's reader calls back into Python once per record through ctypes (about a
microsecond each, before any decoding). Mapping the ring ourselves lets one
poll hand back a whole batch as a slice of memory that `struct.iter_unpack`
decodes in C. The layout is the kernel's ABI (kernel/bpf/ringbuf.c, libbpf's
ringbuf.c does the same): page 0 holds the consumer position (ours to write),
page 1 the producer position, then the data pages, mapped twice in a row so a
record that wraps around the end is still contiguous. Each record starts with
an 8-byte header: u32 length with a BUSY bit (reserved, not yet submitted) and
a DISCARD bit, then u32 page offset; records are 8-byte aligned.
"""

from __future__ import annotations

import mmap
import select
import struct
from collections.abc import Callable
from typing import Any, TypeVar

BUSY = 1 << 31
DISCARD = 1 << 30
HEADER = 8
_U32 = struct.Struct("<I")
T = TypeVar("T")


def record_stride(size: int) -> int:
    """Bytes one record of `size` takes in the ring (header + data, 8-aligned)."""
    return (size + HEADER + 7) & ~7


class RingReader:
    """Consumer side of one BPF_MAP_TYPE_RINGBUF map (by its fd and data size)."""

    def __init__(self, map_fd: int, data_size: int) -> None:
        if data_size <= 0 or data_size & (data_size - 1):
            raise ValueError(f"ring buffer size {data_size} is not a power of two")
        page = mmap.PAGESIZE
        self.size = data_size
        self._mask = data_size - 1
        self._cons_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._data_map = mmap.mmap(
            map_fd, page + 2 * data_size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        # 8-byte aligned loads and stores: single instructions on the CPUs we run on
        self._cons = memoryview(self._cons_map).cast("Q")
        self._prod = memoryview(self._data_map)[:8].cast("Q")
        self.data = memoryview(self._data_map)[page:]  # 2 * size bytes: the ring, twice
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)

    def wait(self, timeout_ms: int) -> None:
        """Sleep until the kernel signals data (or the timeout), unless some is there."""
        if self._prod[0] == self._cons[0]:
            self._epoll.poll(timeout_ms / 1000 if timeout_ms >= 0 else -1)

    def read(
        self,
        rows: struct.Struct,
        length: int,
        budget: int,
        on_row: Callable[[tuple[Any, ...], memoryview, int], T],
        on_other: Callable[[memoryview], T | None],
    ) -> list[T]:
        """Consume up to `budget` committed records (discarded ones count),
        oldest first, converted.

        Records of `length` bytes (the usual case) are decoded a batch at a time
        by `rows`, a Struct of header + record padded to the stride:
        on_row(row, view, offset of the record's data in view) for each; row[0]
        is the header. Anything else (another size) goes singly to
        on_other(data). Discarded records are skipped; a BUSY one (reserved, not
        yet submitted) ends the read. Space is handed back to the producer after
        each batch."""
        out: list[T] = []
        stride = rows.size
        if record_stride(length) != stride:
            raise ValueError(f"a {length}-byte record takes {record_stride(length)} bytes")
        while budget > 0:
            cons, prod = self._cons[0], self._prod[0]
            n = min((prod - cons) // stride, budget, self.size // stride)
            start = cons & self._mask
            view = self.data[start : start + n * stride]
            off, append = HEADER, out.append
            batch = rows.iter_unpack(view)
            try:
                for row in batch:
                    if row[0] != length:  # BUSY or DISCARD set, or another size
                        break
                    append(on_row(row, view, off))
                    off += stride
            finally:
                del batch  # it holds the view
                view.release()
                taken = (off - HEADER) // stride
                self._cons[0] = cons + taken * stride
            budget -= taken
            if taken < n or (n == 0 and prod > cons):
                # stopped at a record the batch does not take (busy, discarded,
                # another size), or less than a stride is pending (a smaller one)
                if not self._read_one(on_other, out):
                    return out
                budget -= 1
            elif n == 0:
                return out
        return out

    def _read_one(self, on_other: Callable[[memoryview], T | None], out: list[T]) -> bool:
        """The record at the consumer position, whatever its size (False: none
        committed yet)."""
        cons, prod = self._cons[0], self._prod[0]
        if cons >= prod:
            return False
        pos = cons & self._mask
        hdr = _U32.unpack_from(self.data, pos)[0]
        if hdr & BUSY:
            return False
        size = hdr & ~(BUSY | DISCARD)
        if not hdr & DISCARD:
            data = self.data[pos + HEADER : pos + HEADER + size]
            try:
                item = on_other(data)
            finally:
                data.release()
            if item is not None:
                out.append(item)
        self._cons[0] = cons + record_stride(size)
        return True

    def close(self) -> None:
        for view in (self._cons, self._prod, self.data):
            view.release()
        self._cons_map.close()
        self._data_map.close()
        self._epoll.close()
