"""The eBPF collector: compile probes/ with bcc, attach per the plan, stream ProbeEvents.

Usage (what `trace`, `ping` and `watch` build on)::

    with BpfCollector("arp or icmp", netns_inodes=[ino1, ino2]) as col:
        plan = col.start()            # compiles + attaches; plan.one_line() to show
        while ...:
            for ev in col.poll(100):  # ProbeEvents, ordered by ev.ts_ns
                ...
        rest = col.drain()            # what is still held back (up to POLL_BUDGET more), ordered
        print(col.lost)

Contract:

* `BpfCollector(filter_expr="", netns_inodes=None, areas=AREAS, functions=True,
  hold_ms=15.0, ringbuf_pages=2048, perf_buffer=False)`. 2048 pages = 8 MiB,
  ~45 k events: a stall of the consumer (start-up, GC) does not lose a flood.
  `filter_expr` is pcap-filter text (see collect/filter.py; a bad filter raises
  UserError in the constructor, before anything is compiled). `netns_inodes`
  limits events to those namespaces (None = all). `areas` picks program
  groups: "dev" (net_dev_queue/start_xmit/xmit, netif_rx, netif_receive_skb),
  "drop" (kfree_skb, consume_skb), "neigh" (neigh_*), "bridge"
  (br_fdb_update, plus br_* function probes where the plan has kprobe/fentry).
  Fewer areas = slightly faster compile. `functions=False` skips the
  kprobe/fentry trials and programs. `perf_buffer=True` forces the perf
  buffer (the delivery used where the kernel has no BPF ring buffer).
* `start() -> Plan` compiles (bcc: ~0.5 s on an idle 2-CPU machine, 1-2 s
  when it is busy; BTF facts come from a per-kernel cache) and attaches;
  raises UserError when not root, bcc missing, no headers or the compile
  fails. Events are only collected after start() returns. start() may run
  in a worker thread: ctypes releases the GIL while clang compiles, so other
  set-up (topology discovery, sniffers) overlaps with it. Call poll/drain
  from one thread.
* `poll(timeout_ms) -> list[ProbeEvent]` waits up to timeout_ms for events,
  reads at most POLL_BUDGET (4096) of them, and returns those older than
  `hold_ms` (default 15 ms), sorted by kernel
  CLOCK_MONOTONIC ns (`ProbeEvent.ts_ns`, comparable with
  time.monotonic_ns()). The hold-back lets nested veth events (the peer's
  netif_rx fires before the sender's net_dev_xmit) and cross-CPU events come
  out in order. `drain()` returns everything still held, sorted.
* `lost`: events the kernel could not deliver (ring buffer full, counted per
  CPU in a BPF map; or perf buffer lost samples). Always show it.
* Delivery: the ring buffer is read straight from its mmap'ed pages
  (collect/ringbuf.py: a batch of records per `struct.iter_unpack`, no
  per-event callback); the perf buffer (older kernels) through bcc's poll.
* `close()` detaches everything (idempotent; also via `with`, and safe after
  Ctrl-C; the kernel drops the programs when the process exits anyway).
* `timings`: {"btf": s (plan + kernel facts), "compile_attach": s} of start().

Event fields (model.ProbeEvent): ts_ns, point (tracepoint or function name),
netns (inode of the device's netns, of the socket's when the skb has no
device, 0 if unknown), ifindex/ifname, skb/head (identity: clones share head;
skb addresses are reused, retire them at kfree_skb/consume_skb), length
(TX includes the Ethernet header, RX not), cloned, packet (PacketSummary
decoded from skb->head; None at net_dev_xmit, where the skb must not be
read, and for neighbour/fdb events; events with identical header bytes share
one object: treat it as read-only), drop_reason (kfree_skb only: the BTF
`enum skb_drop_reason` name without SKB_DROP_REASON_), location (kernel
symbol of the kfree/consume caller), neigh (NeighChange for neigh_* events:
address, old_state -> new_state as NUD names; old_state None when the
tracepoint does not tell it; lladdr; err for neigh_update_done and
neigh_event_send_done), cpu, extra: {"rc": int} at net_dev_xmit (non-zero:
the device dropped it), {"port_ifindex", "port", "mac", "vid"} at
br_fdb_update (ifindex/ifname are the bridge's). With kprobe/fentry plans
(not on our kernels) also points veth_xmit, br_handle_frame, br_forward
(device = the egress port chosen) and br_pass_frame_up.

Filtering happens in the kernel: namespace first (when given), then the
packet filter over the headers decoded with two reads of kernel memory.
Neighbour events match as if they were ARP packets about their address
(`arp`, `host A`, `net A/N` keep them; `icmp`, `tcp`, `port N` drop them).
br_fdb_update ignores the packet filter (no packet at hand; it only fires
when a bridge learns a MAC).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import ctypes
import functools
import mmap
import operator
import os
import re
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from vethtrace.collect import btf as btfmod
from vethtrace.collect import headers as headersmod
from vethtrace.collect import kcache, progcache
from vethtrace.collect import plan as planmod
from vethtrace.collect.filter import Filter, compile_filter
from vethtrace.collect.ringbuf import HEADER, RingReader, record_stride
from vethtrace.errors import UserError
from vethtrace.model import NeighChange, PacketSummary, ProbeEvent, nud_name
from vethtrace.packaged import packaged

PROBES_DIR = Path(os.environ.get("VETHTRACE_PROBES", packaged("probes")))
AREAS = planmod.AREAS
AREA_FILES = {"dev": "dev.c", "drop": "drop.c", "neigh": "neigh.c", "bridge": "bridge.c"}


def point_names(header: Path | None = None) -> dict[int, str]:
    """VT_P_* ids from probes/vethtrace.h -> point names (lower case)."""
    text = (header or PROBES_DIR / "vethtrace.h").read_text()
    return {int(n): name.lower() for name, n in re.findall(r"#define VT_P_(\w+) (\d+)", text)}


# --- kernel facts from BTF -------------------------------------------------------


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


# --- source assembly ---------------------------------------------------------------


def build_source(areas: tuple[str, ...] | list[str], function_mech: str | None) -> str:
    """One source text: vethtrace.h inlined, then the programs for `areas` (and
    kprobe.c for function probes). Inlined, not #included, because bcc rewrites
    map calls (`vt_events.ringbuf_reserve(...)`) only in its main file."""
    files = [AREA_FILES[a] for a in AREAS if a in areas]
    if function_mech in ("kprobe", "fentry"):
        files.append("kprobe.c")
    parts = [(PROBES_DIR / "vethtrace.h").read_text()]
    for name in files:
        text = (PROBES_DIR / name).read_text()
        parts.append(f"/* ---- {name} ---- */\n" + text.replace('#include "vethtrace.h"', ""))
    return "\n".join(parts)


def cflags(
    constants: dict[str, int],
    flt: Filter,
    netns_inodes: list[int] | None,
    ringbuf: bool,
    function_mech: str | None = None,
    ringbuf_pages: int = 512,
) -> list[str]:
    flags = ["-Wno-macro-redefined"]
    flags += [f"-D{k}={v}" for k, v in constants.items()]
    if ringbuf:
        flags += ["-DVT_RINGBUF", f"-DVT_RINGBUF_PAGES={ringbuf_pages}"]
    if flt.active:
        flags += [f"-DVT_FILTER(p)={flt.to_c()}", f"-DVT_FILTER_EMPTY={int(flt.matches_empty)}"]
    if netns_inodes is not None:
        test = " || ".join(f"(n) == {int(i)}u" for i in sorted(set(netns_inodes))) or "0"
        flags += ["-DVT_NETNS_FILTER", f"-DVT_NETNS_OK(n)=({test})"]
    if function_mech == "kprobe":
        flags.append("-DVT_KPROBE")
    elif function_mech == "fentry":
        flags.append("-DVT_FENTRY")
    return flags


def compile_only(
    areas: tuple[str, ...] | list[str] = AREAS, function_mech: str | None = None
) -> float:
    """Compile (and load nothing beyond what bcc autoloads) for tests/doctor; seconds.

    With function_mech="kprobe" the kprobe programs are compiled and loaded into
    the kernel as BPF_PROG_TYPE_KPROBE (they attach nowhere)."""
    headersmod.prepare()
    from bcc import BPF

    consts = kernel_constants(functions=function_mech is not None)
    src = build_source(areas, function_mech)
    t0 = time.monotonic()
    b = BPF(text=src.encode(), cflags=cflags(consts, compile_filter(""), None, True, function_mech))
    try:
        if function_mech == "kprobe":
            for func in FUNCTION_PARAMS:
                if any(k.startswith(f"VT_KARG_{func.upper()}_") for k in consts):
                    b.load_func(f"vt_kp_{func}".encode(), BPF.KPROBE)
        return time.monotonic() - t0
    finally:
        b.cleanup()


# --- the collector -----------------------------------------------------------------


class BpfCollector:
    """Compile, attach and read the probes (see the module docstring for the contract)."""

    POLL_BUDGET = 4096  # events per poll() at most, so a flood cannot hold poll() forever

    def __init__(
        self,
        filter_expr: str | list[str] = "",
        netns_inodes: list[int] | None = None,
        areas: tuple[str, ...] | list[str] = AREAS,
        functions: bool = True,
        hold_ms: float = 15.0,
        ringbuf_pages: int = 2048,
        perf_buffer: bool = False,
    ) -> None:
        self.filter = compile_filter(filter_expr)
        self.netns_inodes = list(netns_inodes) if netns_inodes is not None else None
        unknown = [a for a in areas if a not in AREAS]
        if unknown:
            raise UserError(f"unknown probe area(s) {unknown}; choose from {list(AREAS)}")
        self.areas = tuple(areas)
        self.functions = functions
        self.hold_ns = int(hold_ms * 1e6)
        self.ringbuf_pages = ringbuf_pages
        self.force_perf = perf_buffer  # tests: exercise the pre-5.8 delivery path
        self.plan: planmod.Plan | None = None
        self.timings: dict[str, float] = {}
        self._bpf: Any = None
        self._pending: list[ProbeEvent] = []  # not yet released, unsorted tail
        self._layout: _Layout | None = None
        self._ring: RingReader | None = None
        self._cached: progcache.Loaded | None = None  # programs loaded from the cache
        self.from_cache = False
        self._error: Exception | None = None
        self._names_cache: dict[bytes, str] = {}
        self._pkt_cache: dict[bytes, PacketSummary | None] = {}
        self._drop_names: dict[int, str] = {}
        self._lost_kept = 0  # perf buffer losses; after close() also the ring's count
        self._points = point_names()
        self._kallsyms = Kallsyms()
        self._reasons: dict[int, str] = {}
        self._subsys: dict[int, str] = {}
        self._event_cls: Any = None
        self._closed = False

    # context manager
    def __enter__(self) -> BpfCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def plan_line(self) -> str:
        return self.plan.one_line() if self.plan else "not started"

    def start(self) -> planmod.Plan:
        if os.geteuid() != 0:
            raise UserError("tracing needs root (CAP_BPF/CAP_PERFMON); run it with sudo")
        t0 = time.monotonic()
        plan = planmod.decide(allow_functions=self.functions)
        hdr = headersmod.prepare()
        plan.headers = hdr.label
        if hdr.kind == "missing":
            raise UserError("no kernel headers for bcc; run `./run setup` (see README)")
        fmech = plan.mechanism_for_functions() if self.functions else None
        fmech = fmech if fmech in ("kprobe", "fentry") and "bridge" in self.areas else None
        try:
            consts = kernel_constants(functions=fmech is not None)
            self._reasons, self._subsys = drop_reason_tables()
        except btfmod.BtfError as exc:
            raise UserError(f"kernel layout not understood from BTF: {exc}") from None
        self._kallsyms.preload()
        if self.force_perf:
            plan.delivery = "perf buffer"
        ringbuf = plan.delivery == "ring buffer"
        self.timings["btf"] = time.monotonic() - t0
        src = build_source(self.areas, fmech)
        flags = cflags(consts, self.filter, self.netns_inodes, ringbuf, fmech, self.ringbuf_pages)
        t1 = time.monotonic()
        # the cache holds raw tracepoint programs on a ring buffer: this kernel's plan
        cache_key = progcache.key(src, [*flags, hdr.label]) if ringbuf and not fmech else None
        self._cached = progcache.load(cache_key) if cache_key else None
        if self._cached is not None:
            self._layout = _Layout(self._cached.layout)
            events_fd = self._cached.map_fd("vt_events")
        else:
            self._compile(src, flags, consts, plan, fmech)
            table = self._bpf[b"vt_events"]
            spec = _Layout.spec(self._bpf[b"vt_layout"].Leaf)  # as compiled
            self._layout = _Layout(spec)
            if cache_key:
                progcache.store(cache_key, self._bpf, spec)
            events_fd = table.map_fd
            if not ringbuf:
                table.open_perf_buffer(self._on_event, page_cnt=256, lost_cb=self._on_lost)
        if ringbuf:
            self._ring = RingReader(events_fd, self.ringbuf_pages * mmap.PAGESIZE)
        self.timings["compile_attach"] = time.monotonic() - t1
        self.from_cache = self._cached is not None
        self.plan = plan
        return plan

    def _compile(
        self,
        src: str,
        flags: list[str],
        consts: dict[str, int],
        plan: planmod.Plan,
        fmech: str | None,
    ) -> None:
        """bcc: compile, load, attach the raw tracepoints (and kprobes where planned)."""
        try:
            from bcc import BPF
        except ImportError:
            raise UserError(
                "bcc's Python bindings are missing (Debian: apt install python3-bpfcc; "
                "use the venv made from /usr/bin/python3)"
            ) from None
        try:
            self._bpf = BPF(text=src.encode(), cflags=flags)  # autoloads + attaches raw tracepoints
            if fmech == "kprobe":
                self._attach_kprobes(consts, plan)
        except Exception as exc:
            self.close()
            raise UserError(f"BPF compile/attach failed: {str(exc).splitlines()[0]}") from None

    def _attach_kprobes(self, consts: dict[str, int], plan: planmod.Plan) -> None:
        """Attach each function probe whose BTF was found; a missing function
        (module not loaded) is skipped and noted in the plan, not fatal."""
        for point in ("veth transmit", "bridge receive"):
            choice = plan.choice(point)
            attached = []
            for func in choice.hooks:
                why = None
                if not any(k.startswith(f"VT_KARG_{func.upper()}_") for k in consts):
                    why = "no BTF for it (module not loaded?)"
                else:
                    try:
                        self._bpf.attach_kprobe(
                            event=func.encode(), fn_name=f"vt_kp_{func}".encode()
                        )
                        attached.append(func)
                    except Exception as exc:
                        why = str(exc).splitlines()[0]
                if why:
                    choice.tried.append(f"kprobe {func} skipped: {why}")
            if not attached:
                choice.blind_spot = "function probes unavailable now; see tried"
            choice.hooks = attached or choice.hooks

    @property
    def lost(self) -> int:
        """Events the kernel could not deliver so far (ring buffer full / perf lost)."""
        return self._lost_kept + self._ring_lost()

    def _ring_lost(self) -> int:
        """Reservations the programs counted as failed (ring buffer plans)."""
        try:
            if self._cached is not None:
                return self._cached.percpu_sum("vt_lost")
            if self._bpf is not None and self.plan and self.plan.delivery == "ring buffer":
                return int(self._bpf[b"vt_lost"].sum(0).value)
        except Exception:  # the map is gone or unreadable: report what we know
            pass
        return 0

    def _on_lost(self, count: int) -> None:
        self._lost_kept += count

    def _on_event(self, _cpu: int, data: int, _size: int) -> None:
        """perf buffer callback (the ring buffer is read by _read_ring)."""
        try:
            assert self._layout is not None
            buf = ctypes.string_at(data, self._layout.size)
            self._pending.append(self._event((0, *self._layout.hot(buf)), buf, 0))
        except Exception as exc:  # ctypes would print and swallow it; poll() re-raises
            self._error = self._error or exc

    def poll(self, timeout_ms: int = 100) -> list[ProbeEvent]:
        if self._ring is not None:
            self._ring.wait(timeout_ms)
            self._read_ring(self.POLL_BUDGET)
        elif self._bpf is not None:
            self._bpf.perf_buffer_poll(timeout_ms)
        else:
            raise RuntimeError("BpfCollector.poll() before start()")
        if self._error is not None:
            raise self._error
        return self._release(time.monotonic_ns() - self.hold_ns)

    def drain(self) -> list[ProbeEvent]:
        """Read what the kernel still holds and return every buffered event, sorted."""
        if self._ring is not None:
            self._read_ring(self._ring.size)
        elif self._bpf is not None:
            self._bpf.perf_buffer_poll(0)
        return self._release(None)

    def _read_ring(self, budget: int) -> None:
        """Decode up to `budget` records; the rest waits in the ring (so a flood
        cannot hold poll() forever), and what does not fit there is counted as
        lost by the programs."""
        ring, lay = self._ring, self._layout
        assert ring is not None and lay is not None

        def other(data: memoryview) -> ProbeEvent | None:
            return None  # every program submits a whole struct vt_event

        self._pending += ring.read(lay.ring, lay.size, budget, self._event, other)

    def _release(self, upto: int | None) -> list[ProbeEvent]:
        """Events up to `upto` ns (all when None), sorted; the rest stay pending.
        Arrival order is nearly sorted already, which timsort handles in O(n)."""
        pending = self._pending
        if not pending:
            return []
        pending.sort(key=_ts)
        if upto is None or pending[-1].ts_ns <= upto:
            self._pending = []
            return pending
        cut = bisect.bisect_right(pending, upto, key=_ts)
        self._pending = pending[cut:]
        return pending[:cut]

    def close(self) -> None:
        self._lost_kept += self._ring_lost()  # the count outlives the maps
        if self._ring is not None:
            ring, self._ring = self._ring, None
            ring.close()
        if self._cached is not None:
            cached, self._cached = self._cached, None
            cached.close()
        if self._bpf is not None:
            bpf, self._bpf = self._bpf, None
            bpf.cleanup()
        self._closed = True

    # --- decoding ------------------------------------------------------------------

    def _ifname(self, raw: bytes) -> str:
        name = self._names_cache.get(raw)
        if name is None:
            name = raw.split(b"\0", 1)[0].decode(errors="replace")
            self._names_cache[raw] = name
        return name

    def _packet(self, raw: bytes) -> PacketSummary | None:
        """Decode header bytes not seen recently. The result is shared by every
        event with identical bytes (a packet seen at ten points, a flow's
        packets): treat it as read-only."""
        cache = self._pkt_cache
        if len(cache) > 8192:
            cache.clear()
        assert self._layout is not None
        r = self._layout.pkt(raw)
        pkt = cache[raw] = _packet(r) if r.pkt_flags else None
        return pkt

    def _event(self, row: Any, buf: Any, off: int) -> ProbeEvent:
        """One event from a ring record's row (header, then the `_Layout.HOT`
        fields); `buf` at `off` holds the whole record, read only for neighbour
        and fdb events. The hot path of a flood: every name is a local, every
        repeated conversion a dict lookup."""
        (_hdr, ts, skb, head, location, netns, ifindex, length, reason, rc, cpu, point, cloned,
         name, pkt) = row  # fmt: skip
        ifname = self._names_cache.get(name)
        if ifname is None:
            ifname = self._ifname(name)
        packet = self._pkt_cache.get(pkt, _MISSING)
        if packet is _MISSING:
            packet = self._packet(pkt)
        drop = None
        if point == _P_KFREE:
            drop = self._drop_names.get(reason)
            if drop is None:
                drop = self._drop_names[reason] = drop_reason_name(
                    reason, self._reasons, self._subsys
                )
        ev = ProbeEvent(
            ts,
            self._points.get(point) or f"point{point}",
            netns,
            ifindex,
            ifname,
            skb,
            head,
            length,
            packet,
            drop,
            self._kallsyms.name(location) if location else None,
            None,
            cloned != 0,
            cpu,
        )
        if point <= _LAST_SKB_POINT:
            if point == _P_XMIT:
                ev.extra["rc"] = rc
            return ev
        assert self._layout is not None
        r = self._layout.full(buf, off)
        if ev.point.startswith("neigh_"):
            key = r.key
            addr = (
                socket.inet_ntop(socket.AF_INET6, key)
                if r.family == socket.AF_INET6
                else socket.inet_ntoa(key[:4])
            )
            lladdr = _mac(r.lladdr)
            ev.neigh = NeighChange(
                address=addr,
                old_state=nud_name(r.old_state),
                new_state=nud_name(r.new_state),
                lladdr=None if lladdr == "00:00:00:00:00:00" else lladdr,
                err=rc if ev.point in ("neigh_update_done", "neigh_event_send_done") else None,
            )
        elif ev.point == "br_fdb_update":
            ev.extra.update(
                port_ifindex=r.ifindex2,
                port=self._ifname(r.ifname2),
                mac=_mac(r.lladdr),
                vid=r.vid,
            )
        return ev


_MISSING: Any = object()
_P_XMIT, _P_KFREE, _LAST_SKB_POINT = 3, 6, 7  # VT_P_NET_DEV_XMIT, VT_P_KFREE_SKB, CONSUME


_ts = operator.attrgetter("ts_ns")


class _Layout:
    """struct vt_event as bcc compiled it (from the ctypes class bcc built), turned
    into struct.Struct readers, ~10x faster than ctypes attribute access. `hot`
    reads the fields every event needs, with the packet headers as one bytes
    value (the decode cache's key); `ring` the same behind a ring buffer
    record's header, padded to the record stride, for `iter_unpack` over a
    batch; `pkt` decodes those header bytes; `full` reads everything (neighbour
    and fdb events). Nested structs are flattened as <outer>_<field>."""

    HOT = ("ts", "skb", "head", "location", "netns", "ifindex", "len", "reason", "rc", "cpu",
           "point", "cloned", "ifname", "pkt")  # fmt: skip

    def __init__(self, spec: dict[str, Any]) -> None:
        fields = [(off, name, code) for off, name, code in spec["fields"]]
        self.size = int(spec["size"])
        self.stride = record_stride(self.size)
        pkt_off, pkt_size = spec["pkt"]
        hot = [f for f in fields if f[1] in self.HOT] + [(pkt_off, "pkt", f"{pkt_size}s")]
        hot.sort()
        if tuple(f[1] for f in hot) != self.HOT:  # _event unpacks in this order
            raise RuntimeError(f"struct vt_event changed: hot fields {[f[1] for f in hot]}")
        self.hot = struct.Struct(_format(hot, self.size)).unpack_from
        header = (0, "header", "I")  # u32 length + flags; the page offset is skipped
        self.ring = struct.Struct(_format([header, *_shift(hot, HEADER)], self.stride))
        in_pkt = [(o - pkt_off, n, c) for o, n, c in fields if n.startswith("pkt_")]
        self.pkt = _Reader(in_pkt, "VtPkt")
        self.full = _Reader(fields, "VtEvent")

    @staticmethod
    def spec(cls: Any) -> dict[str, Any]:
        """The compiled struct (bcc's ctypes class) as plain data: what the
        probe cache stores beside the programs."""
        fields: list[tuple[int, str, str]] = []
        _flatten(cls, 0, "", fields)
        return {
            "size": ctypes.sizeof(cls),
            "fields": sorted(fields),
            "pkt": [cls.pkt.offset, cls.pkt.size],
        }


class _Reader:
    def __init__(self, fields: list[tuple[int, str, str]], name: str) -> None:
        self._unpack = struct.Struct(_format(fields)).unpack_from
        tuple_cls: Any = collections.namedtuple(name, [f[1] for f in fields])  # type: ignore[misc]
        self._make = tuple_cls._make

    def __call__(self, buf: Any, off: int = 0) -> Any:
        return self._make(self._unpack(buf, off))


def _format(fields: list[tuple[int, str, str]], size: int | None = None) -> str:
    """struct format for (offset, name, code) fields sorted by offset, padded to `size`."""
    fmt, pos = "<", 0
    for off, _name, code in fields:
        if off > pos:
            fmt += f"{off - pos}x"
        fmt += code
        pos = off + struct.calcsize("<" + code)
    if size is not None and size > pos:
        fmt += f"{size - pos}x"
    return fmt


def _shift(fields: list[tuple[int, str, str]], by: int) -> list[tuple[int, str, str]]:
    return [(off + by, name, code) for off, name, code in fields]


def _flatten(cls: Any, base: int, prefix: str, out: list[tuple[int, str, str]]) -> None:
    for name, ctype in cls._fields_:
        if name.startswith("__pad"):  # bcc's explicit padding
            continue
        off = base + getattr(cls, name).offset
        if isinstance(ctype, type) and issubclass(ctype, ctypes.Structure):
            _flatten(ctype, off, f"{prefix}{name}_", out)
        elif isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
            out.append((off, prefix + name, f"{ctypes.sizeof(ctype)}s"))
        else:
            size = ctypes.sizeof(ctype)
            signed = ctype(-1).value == -1 if size > 0 else False
            code = {1: "b", 2: "h", 4: "i", 8: "q"}[size]
            out.append((off, prefix + name, code if signed else code.upper()))


@functools.lru_cache(maxsize=4096)
def _ip(v: int) -> str:
    return socket.inet_ntoa(v.to_bytes(4, "little"))


@functools.lru_cache(maxsize=4096)
def _mac(b: bytes) -> str:
    return b.hex(":")


def _packet(r: Any) -> PacketSummary:
    s = PacketSummary()
    if r.pkt_flags & 1:
        s.eth_src = _mac(r.pkt_eth_src)
        s.eth_dst = _mac(r.pkt_eth_dst)
    et = s.ethertype = r.pkt_ethertype
    if et == 0x0806:
        s.arp_op = r.pkt_arp_op
        s.arp_sha = _mac(r.pkt_arp_sha)
        s.arp_spa = _ip(r.pkt_saddr)
        s.arp_tha = _mac(r.pkt_arp_tha)
        s.arp_tpa = _ip(r.pkt_daddr)
    elif et == 0x0800:
        s.ip_src, s.ip_dst, s.ip_proto = _ip(r.pkt_saddr), _ip(r.pkt_daddr), r.pkt_ip_proto
        s.ip_id = r.pkt_ip_id
        if r.pkt_flags & 4:
            if r.pkt_ip_proto == 1:
                s.icmp_type, s.icmp_code = r.pkt_icmp_type, r.pkt_icmp_code
                s.icmp_id, s.icmp_seq = r.pkt_icmp_id, r.pkt_icmp_seq
            else:
                s.sport, s.dport = r.pkt_sport, r.pkt_dport
    return s
