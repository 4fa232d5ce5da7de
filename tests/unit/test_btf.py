"""The pure-Python BTF reader: against `bpftool btf dump` of the running kernel
(an independent parser) and against a hand-built blob (bitfields, anonymous
unions, typedefs, enums, tracepoint prototypes)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from functools import cache
from pathlib import Path

import pytest

from vethtrace.collect import btf as btfmod
from vethtrace.collect.kfacts import drop_reasons, kernel_constants

VMLINUX = Path("/sys/kernel/btf/vmlinux")
needs_kernel_btf = pytest.mark.skipif(
    not VMLINUX.exists() or not shutil.which("bpftool"), reason="needs kernel BTF and bpftool"
)


@cache
def _bpftool_raw() -> str:
    return subprocess.run(
        ["bpftool", "btf", "dump", "file", str(VMLINUX), "format", "raw"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def _bpftool_block(header_re: str) -> list[str]:
    lines = _bpftool_raw().splitlines()
    for i, line in enumerate(lines):
        if re.match(header_re, line):
            out = []
            for member in lines[i + 1 :]:
                if not member.startswith("\t"):
                    break
                out.append(member.strip())
            return out
    raise AssertionError(f"{header_re} not in bpftool output")


@needs_kernel_btf
@pytest.mark.parametrize("struct_name", ["sk_buff", "net_device", "neighbour", "net", "sock"])
def test_direct_members_match_bpftool(struct_name: str) -> None:
    b = btfmod.vmlinux()
    expected = []
    for line in _bpftool_block(rf"^\[\d+\] STRUCT '{struct_name}' size="):
        m = re.match(r"'(.*?)' type_id=(\d+) bits_offset=(\d+)(?: bitfield_size=(\d+))?", line)
        assert m, line
        name = "" if m[1] == "(anon)" else m[1]
        expected.append((name, int(m[2]), int(m[3]), int(m[4] or 0)))
    got = [
        (m.name, m.type_id, m.bit_offset, m.bitfield_size)
        for m in b.members(b.find(struct_name, btfmod.STRUCT))
    ]
    assert got == expected


@needs_kernel_btf
def test_type_count_and_drop_reasons_match_bpftool() -> None:
    b = btfmod.vmlinux()
    last_id = max(int(m) for m in re.findall(r"^\[(\d+)\]", _bpftool_raw(), re.M))
    assert b.count == last_id
    expected = {}
    for line in _bpftool_block(r"^\[\d+\] ENUM 'skb_drop_reason'"):
        m = re.match(r"'(\w+)' val=(-?\d+)", line)
        assert m, line
        expected[m[1]] = int(m[2])
    assert b.enum("skb_drop_reason") == expected
    names = drop_reasons(b)
    assert names[expected["SKB_DROP_REASON_NEIGH_FAILED"]] == "NEIGH_FAILED"
    assert names[expected["SKB_DROP_REASON_QDISC_DROP"]] == "QDISC_DROP"
    assert names[expected["SKB_DROP_REASON_NOT_SPECIFIED"]] == "NOT_SPECIFIED"


@cache
def _bpftool_types() -> dict[int, tuple[str, list[tuple[str, int, int]]]]:
    """type id -> (kind, [(member name, type id, bit offset)]) from bpftool."""
    types: dict[int, tuple[str, list[tuple[str, int, int]]]] = {}
    cur: list[tuple[str, int, int]] = []
    for line in _bpftool_raw().splitlines():
        m = re.match(r"^\[(\d+)\] (\w+) ", line)
        if m:
            cur = []
            types[int(m[1])] = (m[2], cur)
            continue
        mm = re.match(r"\t'(.*?)' type_id=(\d+) bits_offset=(\d+)", line)
        if mm:
            cur.append(("" if mm[1] == "(anon)" else mm[1], int(mm[2]), int(mm[3])))
    return types


def _bpftool_offset(struct_id: int, name: str) -> int | None:
    """Bit offset of `name` in a struct, searching anonymous members (bpftool data)."""
    types = _bpftool_types()
    for mname, tid, bits in types[struct_id][1]:
        if mname == name:
            return bits
        if mname == "" and types[tid][0] in ("STRUCT", "UNION"):
            inner = _bpftool_offset(tid, name)
            if inner is not None:
                return bits + inner
    return None


@needs_kernel_btf
def test_kernel_constants_match_bpftool() -> None:
    """Every sk_buff offset the probes use (many inside anonymous unions and
    struct_groups), recomputed from bpftool's dump."""
    b = btfmod.vmlinux()
    c = kernel_constants(b)
    skb = b.find("sk_buff", btfmod.STRUCT)
    for field, const in [("head", "VT_SKB_HEAD"), ("len", "VT_SKB_LEN"), ("dev", "VT_SKB_DEV"),
                         ("sk", "VT_SKB_SK"), ("protocol", "VT_SKB_PROTOCOL"),
                         ("mac_header", "VT_SKB_MAC_HEADER"),
                         ("network_header", "VT_SKB_NETWORK_HEADER")]:  # fmt: skip
        bits = _bpftool_offset(skb, field)
        assert bits is not None and c[const] == bits // 8, field
    cloned = _bpftool_offset(skb, "cloned")
    assert cloned is not None
    assert (c["VT_SKB_CLONED_BYTE"], c["VT_SKB_CLONED_MASK"]) == (cloned // 8, 1 << cloned % 8)
    dev = b.find("net_device", btfmod.STRUCT)
    assert c["VT_DEV_IFINDEX"] * 8 == _bpftool_offset(dev, "ifindex")
    assert c["VT_DEV_NAME"] * 8 == _bpftool_offset(dev, "name")
    assert b.describe(b.tracepoint_params("kfree_skb")[0][1]) == "struct sk_buff *"


# --- a hand-built blob ------------------------------------------------------------


def _blob() -> bytes:
    strings = b"\0int\0s\0a\0bits\0flag\0u\0x\0t_s\0e\0E_ONE\0E_TWO\0btf_trace_tp\0"
    off = {s: strings.index(b"\0" + s.encode() + b"\0") + 1 for s in
           ["int", "s", "a", "bits", "flag", "u", "x", "t_s", "e", "E_ONE", "E_TWO",
            "btf_trace_tp"]}  # fmt: skip

    def t(name: int, kind: int, vlen: int, size: int, kflag: int = 0) -> bytes:
        return struct.pack("<III", name, (kflag << 31) | (kind << 24) | vlen, size)

    types = b""
    types += t(off["int"], btfmod.INT, 0, 4) + struct.pack("<I", 32)  # [1] int
    types += t(0, btfmod.UNION, 1, 4) + struct.pack("<III", off["x"], 1, 0)  # [2] anon union {x}
    types += t(off["s"], btfmod.STRUCT, 4, 16, kflag=1)  # [3] struct s (bitfields)
    types += struct.pack("<III", off["a"], 1, 0)
    types += struct.pack("<III", off["bits"], 1, (3 << 24) | 32)  # 3-bit field at bit 32
    types += struct.pack("<III", off["flag"], 1, (1 << 24) | 35)  # 1-bit field at bit 35
    types += struct.pack("<III", 0, 2, 64)  # anonymous union at byte 8
    types += t(off["t_s"], btfmod.TYPEDEF, 0, 3)  # [4] typedef struct s t_s
    types += t(off["e"], btfmod.ENUM, 2, 4, kflag=1) + struct.pack(
        "<IiIi", off["E_ONE"], 1, off["E_TWO"], -2
    )
    types += t(0, btfmod.PTR, 0, 3)  # [6] struct s *
    types += t(0, btfmod.FUNC_PROTO, 2, 0) + struct.pack("<IIII", 0, 6, 0, 1)  # [7] (s*, int)
    types += t(0, btfmod.PTR, 0, 7)  # [8] pointer to proto
    types += t(off["btf_trace_tp"], btfmod.TYPEDEF, 0, 8)  # [9]
    hdr = struct.pack("<HBBIIIII", btfmod.MAGIC, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def test_blob_members_bitfields_typedefs_enums() -> None:
    b = btfmod.Btf(_blob())
    assert b.count == 9
    assert b.offset("s", "a") == 0
    bits = b.member("s", "bits")
    assert (bits.bit_offset, bits.bitfield_size) == (32, 3)
    flag = b.member("s", "flag")
    assert (flag.offset, flag.bit_offset % 8, flag.bitfield_size) == (4, 3, 1)
    assert b.offset("s", "x") == 8  # through the anonymous union
    with pytest.raises(btfmod.BtfError):
        b.offset("s", "bits")  # a bitfield has no byte offset
    with pytest.raises(btfmod.BtfError):
        b.member("s", "nope")
    assert b.resolve(b.find("t_s", btfmod.TYPEDEF)) == 3
    assert b.size(4) == 16
    assert b.enum("e") == {"E_ONE": 1, "E_TWO": -2}
    params = b.tracepoint_params("tp")
    assert [b.describe(t) for _n, t in params] == ["int"]


def test_bad_blob_is_an_error() -> None:
    with pytest.raises(btfmod.BtfError):
        btfmod.Btf(b"\0" * 40)


@needs_kernel_btf
def test_kernel_facts_cache_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the cache hands back after a JSON round trip equals a fresh BTF read."""
    from vethtrace.collect import kcache
    from vethtrace.collect.kfacts import drop_reason_tables

    monkeypatch.setattr(kcache, "CACHE_DIR", tmp_path)
    kcache.forget()
    try:
        fresh = kernel_constants()
        reasons = drop_reason_tables()
        assert list(tmp_path.glob("kernel-*.json"))
        kcache.forget()  # next reads come from the file
        assert kernel_constants() == fresh == kernel_constants(btfmod.vmlinux())
        assert drop_reason_tables() == reasons
        assert reasons[0] == drop_reasons(btfmod.vmlinux())
    finally:
        kcache.forget()
