"""bpf(2) and perf_event_open(2) through libc's syscall(): the one place that
knows their numbers per architecture and the uapi constants we pass them.

Python has no binding for either call, and bcc's are tied to a compiled
module. The plan's trials (collect/plan.py), the probe cache's loader
(collect/progcache.py) and the benchmark's BPF_ENABLE_STATS all go through
`bpf()` here; each call raises OSError with the kernel's errno.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

_MACHINE = os.uname().machine  # what platform.machine() reads, without its ~1 ms import
SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(_MACHINE)
SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}.get(_MACHINE)

# bpf(2) commands (enum bpf_cmd, uapi/linux/bpf.h)
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_PROG_LOAD = 0, 1, 2, 5
BPF_OBJ_GET_INFO_BY_FD, BPF_RAW_TRACEPOINT_OPEN, BPF_ENABLE_STATS = 15, 17, 32
# program, attach and map types (enum bpf_prog_type, bpf_attach_type, bpf_map_type)
BPF_PROG_TYPE_KPROBE, BPF_PROG_TYPE_RAW_TRACEPOINT, BPF_PROG_TYPE_TRACING = 2, 17, 26
BPF_TRACE_FENTRY = 24
BPF_MAP_TYPE_RINGBUF = 27
# instruction bits (ld_imm64 of a map reference)
BPF_PSEUDO_MAP_FD = 1
LD_IMM64 = 0x18

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(nr: int | None, what: str, *args: object) -> int:
    """syscall(nr, args...): its non-negative result, or OSError(errno)."""
    if nr is None:
        raise OSError(errno.ENOSYS, f"no {what} number known for {_MACHINE}")
    res = int(_libc.syscall(nr, *args))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return res


def bpf(cmd: int, attr: bytes) -> int:
    """bpf(2) with `attr` (the union bpf_attr member, zero-padded to at least
    128 bytes): its result (often an fd), or OSError. Pointers inside attr
    must stay alive for the call."""
    buf = ctypes.create_string_buffer(attr, max(len(attr), 128))
    return _syscall(SYS_BPF, f"bpf({cmd})", cmd, buf, len(buf))


def perf_event_open(attr: bytes, pid: int, cpu: int, group_fd: int, flags: int) -> int:
    """perf_event_open(2) with `attr` (struct perf_event_attr, padded to 128 bytes): an fd."""
    buf = ctypes.create_string_buffer(attr, max(len(attr), 128))
    return _syscall(SYS_PERF_EVENT_OPEN, "perf_event_open", buf, pid, cpu, group_fd, flags)



def map_update(fd: int, key: bytes, value: bytes) -> None:
    """map[key] = value (BPF_ANY) on the map `fd`; OSError when refused."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    bpf(BPF_MAP_UPDATE_ELEM,
        struct.pack("<I4xQQQ", fd, ctypes.addressof(k), ctypes.addressof(v), 0))  # fmt: skip
