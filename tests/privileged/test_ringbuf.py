"""Our ring-buffer reader against a real BPF ring buffer: one page, so records
wrap around its end many times, with discarded records and records of another
size among the usual ones, and an overflow the producer has to count.

The producer is a raw tracepoint on sys_enter that only reacts to this
process calling getppid(): each call is one numbered record, in order.
"""

from __future__ import annotations

import os
import platform
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from vethtrace.collect import headers
from vethtrace.collect.ringbuf import HEADER, RingReader, record_stride

pytestmark = pytest.mark.privileged

GETPPID = {"x86_64": 110, "aarch64": 173}.get(platform.machine())

PROGRAM = r"""
BPF_RINGBUF_OUTPUT(rb, 1);
BPF_ARRAY(seq, u64, 1);
BPF_ARRAY(lost, u64, 1);

struct big { u64 n; u64 a; u64 b; u64 c; };   /* the usual record: 32 bytes */
struct small { u64 n; u64 inv; };             /* another size */

RAW_TRACEPOINT_PROBE(sys_enter)
{
    if ((bpf_get_current_pid_tgid() >> 32) != TGID || ctx->args[1] != SYSNR)
        return 0;
    int zero = 0;
    u64 *s = seq.lookup(&zero);
    u64 *l = lost.lookup(&zero);
    if (!s || !l)
        return 0;
    u64 n = *s;
    *s = n + 1;
    if (n % 7 == 3) {
        u64 *d = rb.ringbuf_reserve(24);
        if (!d) { *l += 1; return 0; }
        d[0] = n;
        rb.ringbuf_discard(d, 0);
    } else if (n % 5 == 4) {
        struct small *m = rb.ringbuf_reserve(sizeof(*m));
        if (!m) { *l += 1; return 0; }
        m->n = n;
        m->inv = ~n;
        rb.ringbuf_submit(m, 0);
    } else {
        struct big *b = rb.ringbuf_reserve(sizeof(*b));
        if (!b) { *l += 1; return 0; }
        b->n = n;
        b->a = n * 3;
        b->b = n ^ 0x5a5a;
        b->c = 0xfeedface;
        rb.ringbuf_submit(b, 0);
    }
    return 0;
}
"""

ROWS = struct.Struct("<I4xQQQQ")  # header + struct big (40 bytes: already a stride)


@pytest.fixture
def producer() -> Iterator[tuple[Any, RingReader]]:
    if GETPPID is None:
        pytest.skip(f"no getppid syscall number for {platform.machine()}")
    from bcc import BPF

    headers.prepare()
    bpf = BPF(text=PROGRAM.encode(), cflags=[f"-DTGID={os.getpid()}", f"-DSYSNR={GETPPID}"])
    ring = RingReader(bpf[b"rb"].map_fd, 4096)
    try:
        yield bpf, ring
    finally:
        ring.close()
        bpf.cleanup()


def _read(ring: RingReader, budget: int = 1 << 20) -> list[tuple[str, int]]:
    def whole(row: tuple[Any, ...], view: memoryview, off: int) -> tuple[str, int]:
        _hdr, n, a, b, c = row
        # the offset points at the record's data in the same view
        assert struct.unpack_from("<Q", view, off)[0] == n
        assert (a, b, c) == (n * 3, n ^ 0x5A5A, 0xFEEDFACE), row
        return ("big", n)

    def other(data: memoryview) -> tuple[str, int]:
        assert len(data) == 16
        n, inv = struct.unpack("<QQ", data)
        assert inv == n ^ 0xFFFFFFFFFFFFFFFF
        return ("small", n)

    return ring.read(ROWS, 32, budget, whole, other)


def _expected(numbers: range) -> list[tuple[str, int]]:
    return [("small" if n % 5 == 4 else "big", n) for n in numbers if n % 7 != 3]


def test_stride() -> None:
    assert record_stride(32) == 40 and record_stride(16) == 24 and record_stride(1) == 16
    assert ROWS.size == record_stride(32) and HEADER == 8


def test_records_in_order_across_wraparound(producer: tuple[Any, RingReader]) -> None:
    bpf, ring = producer
    got: list[tuple[str, int]] = []
    for i in range(3000):  # ~3000 * 35 bytes: the 4 KiB ring wraps ~25 times
        os.getppid()
        if i % 40 == 39:
            got += _read(ring)
    got += _read(ring)
    assert bpf[b"lost"][0].value == 0
    assert got == _expected(range(3000))


def test_budget_leaves_the_rest_in_the_ring(producer: tuple[Any, RingReader]) -> None:
    _bpf, ring = producer
    for _ in range(30):
        os.getppid()
    first = _read(ring, budget=7)  # records consumed, the discarded one (n=3) included
    rest = _read(ring)
    assert first == _expected(range(7))
    assert first + rest == _expected(range(30))
    assert _read(ring) == []


def test_overflow_is_counted_and_order_kept(producer: tuple[Any, RingReader]) -> None:
    bpf, ring = producer
    for _ in range(1000):  # far more than one page holds, nothing read meanwhile
        os.getppid()
    got = _read(ring)
    lost = bpf[b"lost"][0].value
    assert lost > 0 and got
    numbers = [n for _, n in got]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert all(kind == ("small" if n % 5 == 4 else "big") for kind, n in got)
    assert all(n % 7 != 3 for n in numbers)
    # every call was delivered, counted lost, or a record discarded on purpose
    discarded = 1000 - lost - len(got)
    assert 0 <= discarded <= sum(1 for n in range(1000) if n % 7 == 3)
    # and once drained the ring takes records again
    os.getppid()
    assert _read(ring) == [("big", 1000)]
