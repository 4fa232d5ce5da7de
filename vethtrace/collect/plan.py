"""Decide, per probe point, which mechanism this kernel actually allows.

Order of preference: kprobe -> fentry -> tracepoint. Nothing is guessed from
config files or available_filter_functions (EPERM on our machines): each
mechanism is *tried* with a two-instruction program loaded through the bpf(2)
syscall (and, for kprobes, a perf kprobe event), which costs a millisecond and
no compiler. The plan then says what each choice cannot see, because a
tracepoint-only plan is blind to things a kprobe plan would show.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from vethtrace.collect import btf as btfmod
from vethtrace.collect import kcache
from vethtrace.collect import syscall as sc

_NOOP = bytes.fromhex("b7000000000000009500000000000000")  # r0 = 0; exit
_LICENSE = ctypes.create_string_buffer(b"GPL")

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


@dataclass
class Trial:
    ok: bool
    reason: str  # why not (or a note when ok)


def _bpf(cmd: int, attr: bytes) -> tuple[int, int]:
    """(fd, 0), or (-1, errno): a refusal is the answer a trial wants."""
    try:
        return sc.bpf(cmd, attr), 0
    except OSError as exc:
        return -1, exc.errno or 0


def _load_noop(prog_type: int, attach_type: int = 0, btf_id: int = 0) -> tuple[int, int]:
    insns = ctypes.create_string_buffer(_NOOP, len(_NOOP))
    attr = struct.pack(
        "<IIQQIIQII16sIIIIQIIQIII",
        prog_type, 2, ctypes.addressof(insns), ctypes.addressof(_LICENSE),
        0, 0, 0, 0, 0, b"vt_probe", 0, attach_type, 0, 0, 0, 0, 0, 0, 0, btf_id, 0,
    )  # fmt: skip
    return _bpf(sc.BPF_PROG_LOAD, attr)


def _raw_tp_open(name: bytes | None, prog_fd: int) -> tuple[int, int]:
    cname = ctypes.create_string_buffer(name) if name else None
    attr = struct.pack("<QI", ctypes.addressof(cname) if cname else 0, prog_fd)
    return _bpf(sc.BPF_RAW_TRACEPOINT_OPEN, attr)


def _err(e: int) -> str:
    return f"{errno.errorcode.get(e, e)} ({os.strerror(e)})"


@cache
def try_raw_tracepoint(name: str = "net_dev_queue") -> Trial:
    """Load a no-op raw-tracepoint program and attach it for a moment."""
    fd, e = _load_noop(sc.BPF_PROG_TYPE_RAW_TRACEPOINT)
    if fd < 0:
        return Trial(False, f"raw tracepoint program load refused: {_err(e)}")
    try:
        link, e = _raw_tp_open(name.encode(), fd)
        if link < 0:
            return Trial(False, f"raw tracepoint {name} attach refused: {_err(e)}")
        os.close(link)
        return Trial(True, "raw tracepoint loads and attaches")
    finally:
        os.close(fd)


@cache
def try_fentry(func: str = "veth_xmit") -> Trial:
    """Load a no-op fentry program on `func` (BTF id from vmlinux) and attach it."""
    try:
        btf_id = kcache.cached(f"btf_id:{func}", lambda: btfmod.vmlinux().find(func, btfmod.FUNC))
    except btfmod.BtfError as exc:
        return Trial(False, str(exc))
    fd, e = _load_noop(sc.BPF_PROG_TYPE_TRACING, sc.BPF_TRACE_FENTRY, btf_id)
    if fd < 0:
        return Trial(False, f"fentry program load refused: {_err(e)}")
    try:
        link, e = _raw_tp_open(None, fd)
        if link < 0:
            return Trial(False, f"fentry attach to {func} refused: {_err(e)}")
        os.close(link)
        return Trial(True, f"fentry on {func} loads and attaches")
    finally:
        os.close(fd)


def tracefs() -> str | None:
    """Mounted tracefs directory, or None."""
    for path in TRACEFS_CANDIDATES:
        if os.path.exists(os.path.join(path, "available_events")):
            return path
    return None


@cache
def try_kprobe(func: str = "veth_xmit") -> Trial:
    """Create a perf kprobe event on `func` (and close it): the only honest test.
    veth and bridge are modules on most distributions and may not be loaded
    yet; then kprobes are tried on a built-in function instead, and the
    module's functions are attached (or skipped) when tracing starts."""
    pmu = Path("/sys/bus/event_source/devices/kprobe/type")
    if not pmu.exists():
        tfs = tracefs()
        if tfs and not os.path.exists(os.path.join(tfs, "kprobe_events")):
            return Trial(False, f"no kprobe PMU and no {tfs}/kprobe_events (CONFIG_KPROBES unset)")
        return Trial(False, "no kprobe PMU in /sys/bus/event_source (CONFIG_KPROBES unset?)")
    pmu_type = int(pmu.read_text())
    err = _perf_kprobe(pmu_type, func)
    note = f"kprobe on {func} attaches"
    if err == errno.ENOENT and _perf_kprobe(pmu_type, "netif_receive_skb") == 0:
        note = f"kprobes work; {func} not in the kernel now (module not loaded?)"
        err = 0
    if err:
        return Trial(False, f"kprobe on {func} refused: {_err(err)}")
    fd2, e = _load_noop(sc.BPF_PROG_TYPE_KPROBE)
    if fd2 < 0:
        return Trial(False, f"kprobe program load refused: {_err(e)}")
    os.close(fd2)
    return Trial(True, note)


def _perf_kprobe(pmu_type: int, func: str) -> int:
    """errno of creating a perf kprobe event on func (0: it worked, and is closed)."""
    name = ctypes.create_string_buffer(func.encode())
    # perf_event_attr: type, size, config, sample_period, sample_type, read_format,
    # flags, wakeup_events, bp_type, config1 (kprobe_func), config2 (offset)
    attr = struct.pack("<IIQQQQQIIQQ", pmu_type, 128, 0, 0, 0, 0, 0, 0, 0,
                       ctypes.addressof(name), 0)  # fmt: skip
    try:
        fd = sc.perf_event_open(attr, -1, 0, -1, 8)  # pid -1, cpu 0, CLOEXEC
    except OSError as exc:
        return exc.errno or 0
    os.close(fd)
    return 0


@cache
def ringbuf_supported() -> Trial:
    attr = struct.pack("<IIII", sc.BPF_MAP_TYPE_RINGBUF, 0, 0, 4096)
    fd, e = _bpf(sc.BPF_MAP_CREATE, attr)
    if fd < 0:
        return Trial(False, f"ring buffer map refused: {_err(e)}")
    os.close(fd)
    return Trial(True, "BPF ring buffer available")


# --- the plan -------------------------------------------------------------------


@dataclass
class PointChoice:
    point: str  # "veth transmit", "bridge receive", ...
    mechanism: str  # "kprobe" | "fentry" | "tracepoint" | "none"
    hooks: list[str]  # what gets attached
    blind_spot: str  # what this choice cannot see ("" when nothing notable)
    tried: list[str] = field(default_factory=list)  # "kprobe: <why not>", ...


@dataclass
class Plan:
    choices: list[PointChoice]
    delivery: str  # "ring buffer" | "perf buffer"
    headers: str = ""

    def choice(self, point: str) -> PointChoice:
        return next(c for c in self.choices if c.point == point)

    def one_line(self) -> str:
        """e.g. 'all tracepoints, ring buffer' or 'kprobe: veth transmit; tracepoint: ...'."""
        mechs = {c.mechanism for c in self.choices}
        if len(mechs) == 1:
            return f"all {mechs.pop()}s, {self.delivery}"
        by: dict[str, list[str]] = {}
        for c in self.choices:
            by.setdefault(c.mechanism, []).append(c.point)
        return "; ".join(f"{m}: {', '.join(p)}" for m, p in by.items()) + f"; {self.delivery}"

    def blind_line(self) -> str:
        """What this plan cannot see, tersely ('' when nothing notable)."""
        parts = [f"{c.point}: {BLIND_SHORT.get(c.point, c.blind_spot)}"
                 for c in self.choices if c.blind_spot]  # fmt: skip
        return "; ".join(parts)

    def describe(self) -> dict[str, object]:
        """JSON-able form (recordings, doctor --json)."""
        return {
            "delivery": self.delivery,
            "headers": self.headers,
            "points": [
                {"point": c.point, "mechanism": c.mechanism, "hooks": c.hooks,
                 "blind_spot": c.blind_spot, "tried": c.tried}
                for c in self.choices
            ],
        }  # fmt: skip

    def mechanism_for_functions(self) -> str:
        """kprobe/fentry/tracepoint used for the veth and bridge function probes."""
        return self.choice("veth transmit").mechanism


TRACEPOINT_BLIND = {
    "veth transmit": (
        "no veth-specific hook: net_dev_start_xmit on the veth and netif_rx on its peer stand "
        "in for veth_xmit; the veth's own drops show only as kfree_skb"
    ),
    "bridge receive": (
        "the bridge's rx_handler (br_handle_frame) and forwarding decision are not marked: "
        "inferred from netif_receive_skb on the port followed by the same skb on the bridge "
        "device, or by net_dev_queue on another port; br_fdb_update fires only when learning"
    ),
}

BLIND_SHORT = {
    "veth transmit": "no veth_xmit (net_dev_start_xmit + the peer's netif_rx stand in)",
    "bridge receive": "no rx_handler/forwarding decision (inferred from the same skb "
    "on port, then bridge or another port)",
}

# point -> (hooks for tracepoints, kernel functions for kprobe/fentry, area)
POINTS: dict[str, tuple[list[str], list[str], str]] = {
    "veth transmit": (["net_dev_start_xmit", "net_dev_xmit"], ["veth_xmit"], "dev"),
    "bridge receive": (
        ["netif_receive_skb", "br_fdb_update"],
        ["br_handle_frame", "br_forward", "br_pass_frame_up"],
        "bridge",
    ),
    "device receive": (["netif_rx", "netif_receive_skb"], [], "dev"),
    "device transmit": (["net_dev_queue", "net_dev_start_xmit", "net_dev_xmit"], [], "dev"),
    "drops": (["kfree_skb", "consume_skb"], [], "drop"),
    "neighbour": (
        [
            "neigh_create",
            "neigh_update",
            "neigh_update_done",
            "neigh_timer_handler",
            "neigh_event_send_done",
        ],
        [],
        "neigh",
    ),
}

AREAS = ("dev", "drop", "neigh", "bridge")


def _in_btf(name: str) -> bool:
    """A raw tracepoint exists when BTF has its btf_trace_ typedef (in vmlinux,
    or in a loaded module's BTF, e.g. bridge's br_fdb_update)."""
    try:
        btfmod.find_anywhere(f"btf_trace_{name}", btfmod.TYPEDEF)
        return True
    except btfmod.BtfError:
        return False


def _tracepoint_exists(name: str) -> bool:
    """Looked up once per kernel build and set of loaded modules (kcache):
    scanning BTF costs ~0.25 s, most of a cached start."""
    wanted = [t for tps, _funcs, _area in POINTS.values() for t in tps]
    present = kcache.cached("tracepoints", lambda: [t for t in wanted if _in_btf(t)])
    return name in present


def decide(allow_functions: bool = True) -> Plan:
    """The plan for this kernel. `allow_functions=False` skips kprobe/fentry trials
    (tracepoints only), e.g. when a caller wants the fastest start."""
    raw = try_raw_tracepoint()
    choices = []
    for point, (tps, funcs, _area) in POINTS.items():
        tried: list[str] = []
        if funcs and allow_functions:
            kp = try_kprobe(funcs[0])
            if kp.ok:
                choices.append(PointChoice(point, "kprobe", funcs, "", tried))
                continue
            tried.append(f"kprobe: {kp.reason}")
            fe = try_fentry(funcs[0])
            if fe.ok:
                choices.append(PointChoice(point, "fentry", funcs, "", tried))
                continue
            tried.append(f"fentry: {fe.reason}")
        present = [t for t in tps if _tracepoint_exists(t)]
        missing = [t for t in tps if t not in present]
        if not raw.ok or not present:
            why = raw.reason if not raw.ok else "tracepoints missing from this kernel"
            choices.append(PointChoice(point, "none", [], f"not traced: {why}", tried))
            continue
        blind = TRACEPOINT_BLIND.get(point, "")
        if missing:
            blind = (blind + "; " if blind else "") + f"missing here: {', '.join(missing)}"
        choices.append(PointChoice(point, "tracepoint", present, blind, tried))
    rb = ringbuf_supported()
    return Plan(choices, "ring buffer" if rb.ok else "perf buffer")
