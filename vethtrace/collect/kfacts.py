"""Kernel facts the probes need, read from BTF: every struct offset and
tracepoint/function argument position (handed to the C as -D constants), and
the names of the kernel's drop reasons (for kfree_skb events).

The probe source never includes kernel headers for a layout (vethtrace/probes/vethtrace.h
keeps kernel structures opaque), so these facts are the only link between the
C and the running kernel. What a kernel lacks (an older tracepoint, drop
reasons before 5.17, a bridge module not loaded) is left out, and
VT_HAVE_<TRACEPOINT> tells the C which programs to build. Both tables are
cached per kernel build (collect/kcache.py).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from vethtrace.collect import btf as btfmod
from vethtrace.collect import kcache


def _arg_index(b: btfmod.Btf, tp: str, pred: Any, what: str, nth: int = 0) -> int:
    """Index (in ctx->args) of the nth parameter of raw tracepoint `tp` matching pred."""
    hits = [i for i, (_n, t) in enumerate(b.tracepoint_params(tp)) if pred(b.describe(t))]
    if len(hits) <= nth:
        raise btfmod.BtfError(f"tracepoint {tp} has no {what} argument in this kernel")
    return hits[nth]


# Parameter positions of the kprobed functions, unchanged since Linux 4.x; used
# only when no BTF describes the function (5.10 ships no module BTF for veth
# and bridge, so without this the plan said kprobe but attached nothing).
KNOWN_PARAM_POSITIONS = {
    ("veth_xmit", "skb"): 0,
    ("veth_xmit", "dev"): 1,
    ("br_handle_frame", "pskb"): 0,
    ("br_forward", "to"): 0,
    ("br_forward", "skb"): 1,
    ("br_pass_frame_up", "skb"): 0,
}


def _func_param(func: str, name: str) -> int:
    """Position of parameter `name` of kernel function `func` (vmlinux or module
    BTF; the known prototype when the kernel has no BTF for it)."""
    try:
        b, tid = btfmod.find_anywhere(func, btfmod.FUNC)
    except btfmod.BtfError:
        if (func, name) in KNOWN_PARAM_POSITIONS:
            return KNOWN_PARAM_POSITIONS[(func, name)]
        raise
    for i, (n, _t) in enumerate(b.func_params(tid)):
        if n == name:
            return i
    raise btfmod.BtfError(f"{func}() has no parameter {name!r} in this kernel")


def kernel_constants(b: btfmod.Btf | None = None, functions: bool = False) -> dict[str, int]:
    """Every offset and argument position the probes use, from BTF (-D constants).
    Cached per kernel build (kcache) unless a Btf is passed explicitly."""
    if b is None:
        name = "constants+functions" if functions else "constants"
        return kcache.cached(name, lambda: kernel_constants(btfmod.vmlinux(), functions))
    cloned = b.member("sk_buff", "cloned")
    c = {
        "VT_SKB_HEAD": b.offset("sk_buff", "head"),
        "VT_SKB_LEN": b.offset("sk_buff", "len"),
        "VT_SKB_DEV": b.offset("sk_buff", "dev"),
        "VT_SKB_SK": b.offset("sk_buff", "sk"),
        "VT_SKB_PROTOCOL": b.offset("sk_buff", "protocol"),
        "VT_SKB_MAC_HEADER": b.offset("sk_buff", "mac_header"),
        "VT_SKB_NETWORK_HEADER": b.offset("sk_buff", "network_header"),
        "VT_SKB_CLONED_BYTE": cloned.bit_offset // 8,
        "VT_SKB_CLONED_MASK": 1 << (cloned.bit_offset % 8),
        "VT_DEV_IFINDEX": b.offset("net_device", "ifindex"),
        "VT_DEV_NAME": b.offset("net_device", "name"),
        "VT_DEV_NET": b.offset("net_device", "nd_net.net"),
        "VT_NET_INUM": b.offset("net", "ns.inum"),
    }
    # Everything below may be missing on other kernels (older tracepoints, a
    # bridge built as a module): each group is used only when BTF describes it,
    # and VT_HAVE_<TRACEPOINT> tells the C which programs to build.
    for group in (_sock_constants, _dev_constants, _drop_constants, _neigh_constants,
                  _bridge_constants):  # fmt: skip
        try:
            c.update(group(b))
        except btfmod.BtfError:
            continue
    block = [(c[k], size) for k, size in (("VT_SKB_HEAD", 8), ("VT_SKB_MAC_HEADER", 2),
             ("VT_SKB_NETWORK_HEADER", 2), ("VT_SKB_PROTOCOL", 2))]  # fmt: skip
    # 8-aligned block: older verifiers (6.1, 6.12) reject the u64 load of
    # skb->head from an unaligned stack offset ("misaligned stack access").
    c["VT_SKB_BLOCK_OFF"] = min(off for off, _ in block) & ~7
    end = max(off + size for off, size in block)
    c["VT_SKB_BLOCK_LEN"] = (end - c["VT_SKB_BLOCK_OFF"] + 7) & ~7
    if c["VT_SKB_BLOCK_LEN"] > 128:
        raise btfmod.BtfError("sk_buff header fields too far apart for one read")
    if functions:
        # each function only when its BTF is at hand (veth and bridge may be
        # modules, loaded or not); kprobe.c builds only those programs
        for func, params in FUNCTION_PARAMS.items():
            try:
                c.update({f"VT_KARG_{func.upper()}_{p.upper()}": _func_param(func, p)
                          for p in params})  # fmt: skip
            except btfmod.BtfError:
                continue
            with contextlib.suppress(btfmod.BtfError):  # fentry: vmlinux functions only
                b.find(func, btfmod.FUNC)
                c[f"VT_VMLINUX_{func.upper()}"] = 1
        c.update(_ptregs_args(b))
    return c


# kernel function -> the parameters the kprobe/fentry programs read
FUNCTION_PARAMS = {
    "veth_xmit": ("skb", "dev"),
    "br_handle_frame": ("pskb",),
    "br_forward": ("skb", "to"),
    "br_pass_frame_up": ("skb",),
}


def _sock_constants(b: btfmod.Btf) -> dict[str, int]:
    return {"VT_SK_NET": b.offset("sock", "__sk_common.skc_net.net")}


def _dev_constants(b: btfmod.Btf) -> dict[str, int]:
    c = {
        "VT_ARG_START_XMIT_DEV": _arg_index(b, "net_dev_start_xmit", _is("net_device *"), "dev"),
        "VT_ARG_XMIT_DEV": _arg_index(b, "net_dev_xmit", _is("net_device *"), "dev"),
        "VT_ARG_XMIT_RC": _arg_index(b, "net_dev_xmit", lambda t: t == "int", "rc"),
        "VT_ARG_XMIT_LEN": _arg_index(b, "net_dev_xmit", lambda t: t == "unsigned int", "len"),
    }
    for tp in ("net_dev_queue", "net_dev_start_xmit", "net_dev_xmit", "netif_rx",
               "netif_receive_skb"):  # fmt: skip
        c.update(_have(b, tp))
    return c


def _drop_constants(b: btfmod.Btf) -> dict[str, int]:
    c = {"VT_ARG_KFREE_LOCATION": _arg_index(b, "kfree_skb", _is("void *"), "location")}
    c.update(_have(b, "kfree_skb"))
    with contextlib.suppress(btfmod.BtfError):  # reason: 5.17+
        c["VT_ARG_KFREE_REASON"] = _arg_index(b, "kfree_skb", _is("skb_drop_reason"), "reason")
    with contextlib.suppress(btfmod.BtfError):  # consume_skb's location: 6.3+
        c["VT_ARG_CONSUME_LOCATION"] = _arg_index(b, "consume_skb", _is("void *"), "location")
    with contextlib.suppress(btfmod.BtfError):
        c.update(_have(b, "consume_skb"))
    return c


def _neigh_constants(b: btfmod.Btf) -> dict[str, int]:
    c = {
        "VT_NEIGH_DEV": b.offset("neighbour", "dev"),
        "VT_NEIGH_TBL": b.offset("neighbour", "tbl"),
        "VT_NEIGH_KEY": b.offset("neighbour", "primary_key"),
        "VT_NEIGH_HA": b.offset("neighbour", "ha"),
        "VT_NEIGH_NUD_STATE": b.offset("neighbour", "nud_state"),
        "VT_NTBL_FAMILY": b.offset("neigh_table", "family"),
    }
    with contextlib.suppress(btfmod.BtfError):
        c.update(
            VT_ARG_NCREATE_TBL=_arg_index(b, "neigh_create", _is("neigh_table *"), "tbl"),
            VT_ARG_NCREATE_DEV=_arg_index(b, "neigh_create", _is("net_device *"), "dev"),
            VT_ARG_NCREATE_PKEY=_arg_index(b, "neigh_create", lambda t: t == "void *", "pkey"),
            **_have(b, "neigh_create"),
        )
    with contextlib.suppress(btfmod.BtfError):
        c.update(
            VT_ARG_NUPDATE_LLADDR=_arg_index(b, "neigh_update", lambda t: t == "u8 *", "lladdr"),
            VT_ARG_NUPDATE_NEW=_arg_index(b, "neigh_update", lambda t: t == "u8", "new"),
            **_have(b, "neigh_update"),
        )
    for tp in ("neigh_update_done", "neigh_timer_handler", "neigh_event_send_done"):
        with contextlib.suppress(btfmod.BtfError):
            c.update(_have(b, tp))
    return c


def _bridge_constants(b: btfmod.Btf) -> dict[str, int]:
    """The bridge's types live in vmlinux, or in the bridge module's split BTF."""
    try:
        b.find("net_bridge", btfmod.STRUCT)
    except btfmod.BtfError:
        b = btfmod.module("bridge")
    return {
        "VT_BR_DEV": b.offset("net_bridge", "dev"),
        "VT_BRPORT_DEV": b.offset("net_bridge_port", "dev"),
        "VT_ARG_FDB_BR": _arg_index(b, "br_fdb_update", _is("net_bridge *"), "br"),
        "VT_ARG_FDB_PORT": _arg_index(b, "br_fdb_update", _is("net_bridge_port *"), "port"),
        "VT_ARG_FDB_ADDR": _arg_index(b, "br_fdb_update", _is("char *"), "addr"),
        "VT_ARG_FDB_VID": _arg_index(b, "br_fdb_update", lambda t: t == "u16", "vid"),
        **_have(b, "br_fdb_update"),
    }


def _have(b: btfmod.Btf, tp: str) -> dict[str, int]:
    """{"VT_HAVE_<TP>": 1} when raw tracepoint `tp` exists (its btf_trace_ typedef)."""
    b.find(f"btf_trace_{tp}", btfmod.TYPEDEF)
    return {f"VT_HAVE_{tp.upper()}": 1}


def _ptregs_args(b: btfmod.Btf) -> dict[str, int]:
    """Offsets in struct pt_regs of the first four argument registers (kprobes)."""
    machine = os.uname().machine
    if machine == "x86_64":
        names = ("di", "si", "dx", "cx")
        return {f"VT_PTREGS_ARG{i}": b.offset("pt_regs", r) for i, r in enumerate(names)}
    base = b.offset("pt_regs", "regs") if machine == "aarch64" else 0
    return {f"VT_PTREGS_ARG{i}": base + 8 * i for i in range(4)}


def _is(suffix: str) -> Any:
    return lambda t: t.endswith(suffix)


def drop_reasons(b: btfmod.Btf | None = None) -> dict[int, str]:
    """enum skb_drop_reason value -> name without SKB_DROP_REASON_ (from BTF)."""
    b = b or btfmod.vmlinux()
    out: dict[int, str] = {}
    for name, val in b.enum("skb_drop_reason").items():
        short = name.removeprefix("SKB_DROP_REASON_").removeprefix("SKB_")
        out.setdefault(val, short)
    return out


SUBSYS_MASK = 0xFFFF0000


def drop_reason_name(reason: int, names: dict[int, str], subsys: dict[int, str]) -> str:
    """Name of a drop reason; subsystem codes (upper 16 bits) as 'SUBSYS:code'."""
    if reason & SUBSYS_MASK:
        sub = reason >> 16
        return f"{subsys.get(sub, f'subsys{sub}')}:{reason & 0xFFFF}"
    return names.get(reason, f"reason{reason}")


def drop_reason_tables() -> tuple[dict[int, str], dict[int, str]]:
    """(reason value -> name, subsystem id -> name), cached per kernel build."""

    def compute() -> list[list[list[Any]]]:
        b = btfmod.vmlinux()
        try:
            reasons = drop_reasons(b)
        except btfmod.BtfError:  # before 5.17: no reasons at all
            reasons = {}
        return [list(map(list, reasons.items())), list(map(list, _subsystems(b).items()))]

    reasons, subsys = kcache.cached("drop_reasons", compute)
    return {int(k): v for k, v in reasons}, {int(k): v for k, v in subsys}


def _subsystems(b: btfmod.Btf) -> dict[int, str]:
    try:
        enum = b.enum("skb_drop_reason_subsys")
    except btfmod.BtfError:
        return {}
    return {v: n.removeprefix("SKB_DROP_REASON_SUBSYS_") for n, v in enum.items()}
