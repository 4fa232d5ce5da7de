"""A small reader of the running kernel's BTF (/sys/kernel/btf/vmlinux).

Why our own reader: bcc compiles against whatever headers are reachable, and
on our machines those describe another kernel (generic 6.1 headers under a
6.18 kernel). Struct layouts therefore come from BTF only, read here and handed
to the BPF program as -D constants. Pure Python, no libbpf, so `doctor` and the
unit tests can use it without root.

Format (kernel Documentation/bpf/btf.rst): a header, a type section (each type
a 12-byte `btf_type` plus kind-specific trailing data) and a string section.
Types are numbered from 1 in file order (0 is `void`); split BTF of modules
continues the numbering of its base.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
MAGIC = 0xEB9F

# Kinds (BTF_KIND_*)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
KIND_NAMES = {
    INT: "INT", PTR: "PTR", ARRAY: "ARRAY", STRUCT: "STRUCT", UNION: "UNION", ENUM: "ENUM",
    FWD: "FWD", TYPEDEF: "TYPEDEF", VOLATILE: "VOLATILE", CONST: "CONST",
    RESTRICT: "RESTRICT", FUNC: "FUNC", FUNC_PROTO: "FUNC_PROTO", VAR: "VAR",
    DATASEC: "DATASEC", FLOAT: "FLOAT", DECL_TAG: "DECL_TAG", TYPE_TAG: "TYPE_TAG",
    ENUM64: "ENUM64",
}  # fmt: skip
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)


class BtfError(Exception):
    """The BTF blob is missing, malformed, or lacks a type/member we need."""


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int  # from the start of the outermost struct asked about
    bitfield_size: int  # 0 when not a bitfield

    @property
    def offset(self) -> int:
        """Byte offset (of the byte holding the first bit, for bitfields)."""
        return self.bit_offset // 8


class Btf:
    """Parsed type index of one BTF blob; members and enums decoded on demand."""

    def __init__(self, data: bytes, base: Btf | None = None) -> None:
        if len(data) < 24:
            raise BtfError("BTF blob too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != MAGIC:
            raise BtfError(f"bad BTF magic 0x{magic:04x}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self.base = base
        self._data = data
        self._types_start = hdr_len + type_off
        self._strs = data[hdr_len + str_off : hdr_len + str_off + str_len]
        self._first_id = base.count + 1 if base else 1
        self._str_base = len(base._strs) if base else 0
        # (kind, vlen, kind_flag, name_off, size_or_type, offset of trailing data)
        self._types: list[tuple[int, int, int, int, int, int]] = []
        self._scan(type_len)
        self._by_name: dict[str, list[int]] | None = None

    @classmethod
    def load(cls, path: Path | str = VMLINUX, base: Btf | None = None) -> Btf:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise BtfError(f"cannot read BTF {path}: {exc.strerror}") from None
        return cls(data, base)

    @property
    def count(self) -> int:
        """Highest type id (including the base's)."""
        return self._first_id - 1 + len(self._types)

    def _scan(self, type_len: int) -> None:
        data, pos, end = self._data, self._types_start, self._types_start + type_len
        unpack = struct.unpack_from
        append = self._types.append
        while pos < end:
            name_off, info, size_type = unpack("<III", data, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            pos += 12
            append((kind, vlen, info >> 31, name_off, size_type, pos))
            if kind in (INT, VAR, DECL_TAG):
                pos += 4
            elif kind == ARRAY:
                pos += 12
            elif kind in (STRUCT, UNION, DATASEC, ENUM64):
                pos += 12 * vlen
            elif kind in (ENUM, FUNC_PROTO):
                pos += 8 * vlen
            elif kind > ENUM64 or kind == 0:
                raise BtfError(f"unknown BTF kind {kind} at offset {pos - 12}")

    # --- low level -------------------------------------------------------------

    def string(self, off: int) -> str:
        if off < self._str_base and self.base is not None:
            return self.base.string(off)
        off -= self._str_base
        end = self._strs.index(b"\0", off)
        return self._strs[off:end].decode()

    def _raw(self, type_id: int) -> tuple[int, int, int, int, int, int]:
        if type_id < self._first_id:
            if self.base is None:
                raise BtfError(f"type id {type_id} out of range")
            return self.base._raw(type_id)
        return self._types[type_id - self._first_id]

    def kind(self, type_id: int) -> int:
        return 0 if type_id == 0 else self._raw(type_id)[0]

    def name(self, type_id: int) -> str:
        return "" if type_id == 0 else self.string(self._raw(type_id)[3])

    def find(self, name: str, kind: int | None = None) -> int:
        """Type id of the first type called `name` (of `kind`, if given)."""
        if self._by_name is None:
            index: dict[str, list[int]] = {}
            for i, t in enumerate(self._types):
                if t[3]:
                    index.setdefault(self.string(t[3]), []).append(i + self._first_id)
            self._by_name = index
        for tid in self._by_name.get(name, []):
            if kind is None or self._raw(tid)[0] == kind:
                return tid
        if self.base is not None:
            return self.base.find(name, kind)
        what = KIND_NAMES.get(kind, "type") if kind else "type"
        raise BtfError(f"no {what} {name!r} in BTF")

    def resolve(self, type_id: int) -> int:
        """Skip typedefs and qualifiers."""
        while type_id and self._raw(type_id)[0] in _MODIFIERS:
            type_id = self._raw(type_id)[4]
        return type_id

    def size(self, type_id: int) -> int:
        tid = self.resolve(type_id)
        kind, _vlen, _kf, _n, size_type, pos = self._raw(tid)
        if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
            return size_type
        if kind == PTR:
            return 8
        if kind == ARRAY:
            elem, _index, nelems = struct.unpack_from("<III", self._blob(tid), pos)
            return self.size(elem) * nelems
        raise BtfError(f"type {tid} ({KIND_NAMES.get(kind)}) has no size")

    def _blob(self, type_id: int) -> bytes:
        owner: Btf = self
        while type_id < owner._first_id and owner.base is not None:
            owner = owner.base
        return owner._data

    # --- structs ---------------------------------------------------------------

    def members(self, type_id: int) -> list[Member]:
        """Direct members of a struct/union (anonymous ones have name '')."""
        tid = self.resolve(type_id)
        kind, vlen, kflag, _n, _size, pos = self._raw(tid)
        if kind not in (STRUCT, UNION):
            raise BtfError(f"type {tid} is not a struct or union")
        data = self._blob(tid)
        out = []
        for i in range(vlen):
            name_off, mtype, off = struct.unpack_from("<III", data, pos + 12 * i)
            bits, size = (off & 0xFFFFFF, off >> 24) if kflag else (off, 0)
            out.append(Member(self.string(name_off), mtype, bits, size))
        return out

    def member(self, struct_name: str, path: str) -> Member:
        """Member at dotted `path` inside struct `struct_name`, looking through
        anonymous structs/unions and typedefs; bit offset from the struct's start."""
        tid = self.find(struct_name, STRUCT) if struct_name != "" else 0
        base = 0
        found: Member | None = None
        for part in path.split("."):
            found = self._lookup(tid, part)
            if found is None:
                raise BtfError(f"struct {struct_name} has no member {path!r} in this kernel")
            base += found.bit_offset
            tid = found.type_id
        assert found is not None
        return Member(found.name, found.type_id, base, found.bitfield_size)

    def _lookup(self, type_id: int, name: str) -> Member | None:
        for m in self.members(type_id):
            if m.name == name:
                return m
            if m.name == "" and self.kind(self.resolve(m.type_id)) in (STRUCT, UNION):
                inner = self._lookup(m.type_id, name)
                if inner is not None:
                    return Member(
                        inner.name, inner.type_id, m.bit_offset + inner.bit_offset,
                        inner.bitfield_size,
                    )  # fmt: skip
        return None

    def offset(self, struct_name: str, path: str) -> int:
        m = self.member(struct_name, path)
        if m.bitfield_size:
            raise BtfError(f"{struct_name}.{path} is a bitfield; use member()")
        return m.offset

    # --- enums and functions -----------------------------------------------------

    def enum(self, name: str) -> dict[str, int]:
        """Enumerator name -> value of `enum name` (ENUM or ENUM64)."""
        try:
            tid = self.find(name, ENUM)
        except BtfError:
            tid = self.find(name, ENUM64)
        kind, vlen, kflag, _n, _size, pos = self._raw(tid)
        data = self._blob(tid)
        out: dict[str, int] = {}
        for i in range(vlen):
            if kind == ENUM:
                name_off, val = struct.unpack_from("<Ii" if kflag else "<II", data, pos + 8 * i)
            else:
                name_off, lo, hi = struct.unpack_from("<III", data, pos + 12 * i)
                val = (hi << 32) | lo
            out[self.string(name_off)] = val
        return out

    def func_params(self, proto_id: int) -> list[tuple[str, int]]:
        """(name, type id) of a FUNC_PROTO's parameters (names may be empty)."""
        tid = self.resolve(proto_id)
        kind, vlen, _kf, _n, _ret, pos = self._raw(tid)
        if kind == PTR:
            return self.func_params(self._raw(tid)[4])
        if kind == FUNC:
            return self.func_params(self._raw(tid)[4])
        if kind != FUNC_PROTO:
            raise BtfError(f"type {tid} is not a function prototype")
        data = self._blob(tid)
        return [
            (self.string(n), t)
            for n, t in (struct.unpack_from("<II", data, pos + 8 * i) for i in range(vlen))
        ]

    def tracepoint_params(self, tp: str) -> list[tuple[str, int]]:
        """Arguments of raw tracepoint `tp` as its BPF program sees them
        (the `btf_trace_<tp>` typedef, minus the leading `void *` context)."""
        params = self.func_params(self.find(f"btf_trace_{tp}", TYPEDEF))
        return params[1:]

    def describe(self, type_id: int) -> str:
        """C-ish spelling of a type, e.g. 'struct sk_buff *' (for messages and tests)."""
        if type_id == 0:
            return "void"
        kind, _v, _kf, name_off, size_type, _pos = self._raw(type_id)
        name = self.string(name_off)
        if kind == PTR:
            return self.describe(size_type) + " *"
        if kind in (CONST, VOLATILE, RESTRICT, TYPE_TAG):
            return self.describe(size_type)
        prefix = {STRUCT: "struct ", UNION: "union ", ENUM: "enum ", ENUM64: "enum "}.get(kind, "")
        return prefix + (name or "<anon>")


_VMLINUX: Btf | None = None


def vmlinux() -> Btf:
    """The running kernel's BTF, parsed once per process."""
    global _VMLINUX
    if _VMLINUX is None:
        _VMLINUX = Btf.load(VMLINUX)
    return _VMLINUX


_MODULE_BTF: dict[str, Btf] = {}


def module(name: str) -> Btf:
    """Split BTF of a loaded module (e.g. 'bridge' when not built in), cached."""
    if name not in _MODULE_BTF:
        _MODULE_BTF[name] = Btf.load(VMLINUX.parent / name, base=vmlinux())
    return _MODULE_BTF[name]


MODULES = ("bridge", "veth")  # modules whose BTF vethtrace reads when they are loaded


def loaded_modules() -> list[str]:
    return [m for m in MODULES if (VMLINUX.parent / m).exists()]


def find_anywhere(name: str, kind: int | None = None) -> tuple[Btf, int]:
    """(btf, type id) of `name` in vmlinux or a loaded module from MODULES."""
    try:
        return vmlinux(), vmlinux().find(name, kind)
    except BtfError:
        pass
    for mod in loaded_modules():
        b = module(mod)
        try:
            return b, b.find(name, kind)
        except BtfError:
            continue
    raise BtfError(f"no {name!r} in kernel or module BTF")
