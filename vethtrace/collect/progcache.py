"""Compiled probes kept on disk, so that a repeated start skips bcc's compiler.

bcc runs clang on every start (about 0.5 s on an idle machine, 1-4 s on a busy
one) and keeps nothing. What it produces depends only on the source text, the
-D flags (BTF offsets, delivery) and the kernel and compiler, so after a
compile we save the program bytes, the maps they refer to and the event
layout under a hash of those. The packet filter, the -n namespaces and the
VXLAN ports are map data written before the programs attach
(collect/runcfg.py), and the ring buffer's size is set when its map is made
here: none of them is in the key, so the few sets trace, ping, watch and
record use are compiled once (`vethtrace doctor --prepare`, run by
scripts/setup.sh) and every later run loads them. The next start with the same
key creates the maps, loads the programs and attaches them itself through
bpf(2), in milliseconds. The kernel's verifier checks the programs again on
every load, exactly as when bcc loads them.

Only what this project's tracepoint plan produces is cached: raw tracepoint
programs delivering through a ring buffer. kprobe/fentry plans and the perf
buffer (kernels without a ring buffer) go through bcc every time. A cache
that cannot be read, written or loaded is simply not used.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import json
import mmap
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vethtrace.collect import syscall as sc
from vethtrace.collect.kcache import CACHE_DIR, save_json

VERSION = 2
PREFIX = b"raw_tracepoint__"  # bcc's name for RAW_TRACEPOINT_PROBE(tp) functions
# programs entered by tail call, not attached: name -> (program array, index)
TAIL_PROGRAMS = {"vt_decide": ("vt_progs", 0)}


def _addr(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


def key(source: str, cflags: list[str]) -> str:
    """Everything the compiled bytes depend on."""
    compiler = _compiler()
    uname = os.uname()
    h = hashlib.sha256()
    for part in (str(VERSION), uname.release, uname.version, uname.machine, compiler, source):
        h.update(part.encode() + b"\0")
    for flag in cflags:
        h.update(flag.encode() + b"\0")
    return h.hexdigest()[:20]


def sizeless(flags: list[str]) -> list[str]:
    """The flags without the ring buffer's size, which `load` sets."""
    return [f for f in flags if not f.startswith("-DVT_RINGBUF_PAGES=")]


def _compiler() -> str:
    """bcc's version, read without importing bcc (whose import alone costs ~0.1 s)."""
    spec = importlib.util.find_spec("bcc")
    if spec is None or spec.origin is None:
        return "none"
    try:
        return (Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        return "unknown"


def _path(k: str) -> Path:
    return CACHE_DIR / f"probes-{os.uname().release}-{k}.json"


@dataclass
class _Map:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    fd: int  # in the saved bytes: the fd bcc had; once loaded: ours


def map_info(fd: int) -> _Map:
    info = ctypes.create_string_buffer(88)
    sc.bpf(sc.BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", fd, len(info), _addr(info)))
    mtype, _id, ksize, vsize, entries, flags, name = struct.unpack_from("<6I16s", info.raw)
    return _Map(name.split(b"\0", 1)[0].decode(), mtype, ksize, vsize, entries, flags, fd)


def _map_refs(insns: bytes) -> Iterator[tuple[int, int]]:
    """(offset, fd) of each ld_imm64 instruction that loads a map reference."""
    for pos in range(0, len(insns) - 15, 8):
        op, regs, _off, imm = struct.unpack_from("<BBhi", insns, pos)
        if op == sc.LD_IMM64 and regs >> 4 == sc.BPF_PSEUDO_MAP_FD:
            yield pos, imm


def _relocate(insns: bytes, fds: dict[int, int]) -> bytes:
    out = bytearray(insns)
    for pos, old in _map_refs(insns):
        struct.pack_into("<i", out, pos + 4, fds[old])
    return bytes(out)


def store(k: str, bpf: Any, layout: dict[str, Any]) -> None:
    """Save what bcc compiled (a `bcc.BPF` that autoloaded raw tracepoints)."""
    try:
        from bcc import lib

        count = lib.bpf_num_functions(bpf.module)
        names = [lib.bpf_function_name(bpf.module, i) for i in range(count)]
        known = [n for n in names if n.startswith(PREFIX) or n.decode() in TAIL_PROGRAMS]
        if not names or known != names:
            return  # something we would not know how to attach: no cache
        programs = []
        maps: dict[int, _Map] = {}
        for name in names:
            insns = bpf.dump_func(name)
            for _pos, fd in _map_refs(insns):
                maps.setdefault(fd, map_info(fd))
            if name.startswith(PREFIX):
                programs.append({"tp": name[len(PREFIX) :].decode(), "insns": insns.hex()})
            else:  # tail-called ones first: the others may enter them at once
                programs.insert(0, {"tail": name.decode(), "insns": insns.hex()})
        doc = {
            "version": VERSION,
            "programs": programs,
            "maps": [vars(m) for m in maps.values()],
            "layout": layout,
        }
        save_json(_path(k), doc)
    except (OSError, ValueError, KeyError, AttributeError):
        return


@dataclass
class Loaded:
    """Programs loaded and attached from the cache; close() detaches them."""

    layout: dict[str, Any]
    maps: dict[str, _Map] = field(default_factory=dict)
    fds: list[int] = field(default_factory=list)  # programs and attachments

    def map_fd(self, name: str) -> int:
        return self.maps[name].fd

    def percpu_sum(self, name: str) -> int:
        """Sum over CPUs of entry 0 of a per-CPU u64 array (the lost counter)."""
        m = self.maps[name]
        ncpu, step = possible_cpus(), (m.value_size + 7) & ~7
        value = ctypes.create_string_buffer(step * ncpu)
        k = ctypes.create_string_buffer(4)
        attr = struct.pack("<I4xQQQ", m.fd, _addr(k), _addr(value), 0)
        sc.bpf(sc.BPF_MAP_LOOKUP_ELEM, attr)
        return sum(struct.unpack_from("<Q", value.raw, i * step)[0] for i in range(ncpu))

    def close(self) -> None:
        for fd in reversed(self.fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        for m in self.maps.values():
            with contextlib.suppress(OSError):
                os.close(m.fd)
        self.fds.clear()
        self.maps.clear()


def possible_cpus() -> int:
    """Per-CPU map values come in one slot per *possible* CPU."""
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    except OSError:
        return os.cpu_count() or 1
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def load(
    k: str, ring_pages: int, configure: Callable[[dict[str, int]], None]
) -> Loaded | None:
    """Create, load and attach what `store` saved under key `k`, with a ring
    buffer of `ring_pages` pages; `configure(map fds by name)` runs after the
    maps exist and before any program loads. None when there is nothing
    usable (then compile as usual)."""
    try:
        doc = json.loads(_path(k).read_text())
    except (OSError, ValueError):
        return None
    if doc.get("version") != VERSION:
        return None
    loaded = Loaded(layout=doc["layout"])
    try:
        old_to_new: dict[int, int] = {}
        for spec in doc["maps"]:
            m = _Map(**spec)
            if m.type == sc.BPF_MAP_TYPE_RINGBUF:
                m.max_entries = ring_pages * mmap.PAGESIZE
            attr = struct.pack(
                "<7I16s", m.type, m.key_size, m.value_size, m.max_entries, m.flags, 0, 0,
                m.name.encode()[:15],
            )  # fmt: skip
            new = sc.bpf(sc.BPF_MAP_CREATE, attr)
            old_to_new[m.fd] = new
            loaded.maps[m.name] = _Map(**{**spec, "max_entries": m.max_entries, "fd": new})
        configure({name: m.fd for name, m in loaded.maps.items()})
        license_ = ctypes.create_string_buffer(b"GPL")
        for prog in doc["programs"]:
            code = ctypes.create_string_buffer(_relocate(bytes.fromhex(prog["insns"]), old_to_new))
            count = (len(code) - 1) // 8
            pname = prog.get("tp", prog.get("tail", "")).encode()[:15]
            attr = struct.pack(
                "<IIQQIIQII16sII", sc.BPF_PROG_TYPE_RAW_TRACEPOINT, count, _addr(code),
                _addr(license_), 0, 0, 0, 0, 0, pname, 0, 0,
            )  # fmt: skip
            prog_fd = sc.bpf(sc.BPF_PROG_LOAD, attr)
            loaded.fds.append(prog_fd)
            if "tail" in prog:
                array, index = TAIL_PROGRAMS[prog["tail"]]
                sc.map_update(loaded.maps[array].fd, struct.pack("<I", index),
                              struct.pack("<I", prog_fd))  # fmt: skip
                continue
            tp = ctypes.create_string_buffer(prog["tp"].encode())
            loaded.fds.append(
                sc.bpf(sc.BPF_RAW_TRACEPOINT_OPEN, struct.pack("<QI4x", _addr(tp), prog_fd))
            )
    except (OSError, KeyError, TypeError, ValueError):
        loaded.close()
        return None
    return loaded
