"""The eBPF collector: compile the probes with bcc, attach per the plan, stream ProbeEvents.

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
  `without=("consume_skb",)` leaves those tracepoints of the areas unattached.
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
packet filter over the headers decoded with two reads of kernel memory. With
a filter, the verdict is decided once per skb and remembered by address; the
hooks that follow while the kernel holds the skb answer from memory without
reading it (vethtrace/probes/vethtrace.h, "Decide once per skb"), and the
kfree_skb/consume_skb programs are attached to forget it even when the
"drop" area is not asked for (they then report nothing).
Neighbour events match as if they were ARP packets about their address
(`arp`, `host A`, `net A/N` keep them; `icmp`, `tcp`, `port N` drop them).
br_fdb_update ignores the packet filter (no packet at hand; it only fires
when a bridge learns a MAC).
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import operator
import os
import time
from typing import Any

from vethtrace.collect import btf as btfmod
from vethtrace.collect import headers as headersmod
from vethtrace.collect import plan as planmod
from vethtrace.collect import progcache
from vethtrace.collect.events import Decoder, Layout, contract
from vethtrace.collect.filter import compile_filter
from vethtrace.collect.kallsyms import Kallsyms
from vethtrace.collect.kfacts import FUNCTION_PARAMS, drop_reason_tables, kernel_constants
from vethtrace.collect.ringbuf import RingReader
from vethtrace.collect.source import build_source, cflags
from vethtrace.errors import UserError
from vethtrace.model import ProbeEvent

AREAS = planmod.AREAS
_ts = operator.attrgetter("ts_ns")


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
        without: tuple[str, ...] = (),
    ) -> None:
        self.filter = compile_filter(filter_expr)
        # Tracepoints of the chosen areas not to attach (the flight recorder wants
        # kfree_skb without consume_skb, which fires for every packet delivered).
        self.without = {f"VT_HAVE_{tp.upper()}" for tp in without}
        contract()  # vethtrace.h read now: without the probes this fails here, like a bad filter
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
        self._decoder: Decoder | None = None  # once start() knows the layout
        self._ring: RingReader | None = None
        self._cached: progcache.Loaded | None = None  # programs loaded from the cache
        self.from_cache = False
        self._error: Exception | None = None
        self._lost_kept = 0  # perf buffer losses; after close() also the ring's count
        self._kallsyms = Kallsyms()

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
            consts = {k: v for k, v in consts.items() if k not in self.without}
            reasons, subsys = drop_reason_tables()
        except btfmod.BtfError as exc:
            raise UserError(f"kernel layout not understood from BTF: {exc}") from None
        self._kallsyms.preload()
        if self.force_perf:
            plan.delivery = "perf buffer"
        ringbuf = plan.delivery == "ring buffer"
        self.timings["btf"] = time.monotonic() - t0
        # with a filter the probes remember verdicts per skb, forgotten where
        # skbs are freed: the free hooks are needed even without drop events
        forget = self.filter.active and "drop" not in self.areas
        src = build_source((*self.areas, "drop") if forget else self.areas, fmech)
        flags = cflags(consts, self.filter, self.netns_inodes, ringbuf, fmech, self.ringbuf_pages)
        flags += ["-DVT_FORGET_ONLY"] if forget else []
        t1 = time.monotonic()
        # the cache holds raw tracepoint programs on a ring buffer: this kernel's plan
        cache_key = progcache.key(src, [*flags, hdr.label]) if ringbuf and not fmech else None
        self._cached = progcache.load(cache_key) if cache_key else None
        if self._cached is not None:
            layout = Layout(self._cached.layout)
            events_fd = self._cached.map_fd("vt_events")
        else:
            self._compile(src, flags, consts, plan, fmech)
            table = self._bpf[b"vt_events"]
            spec = Layout.spec(self._bpf[b"vt_layout"].Leaf)  # as compiled
            layout = Layout(spec)
            if cache_key:
                progcache.store(cache_key, self._bpf, spec)
            events_fd = table.map_fd
            if not ringbuf:
                table.open_perf_buffer(self._on_event, page_cnt=256, lost_cb=self._on_lost)
        self._decoder = Decoder(layout, reasons, subsys, self._kallsyms)
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
            dec = self._decoder
            assert dec is not None
            buf = ctypes.string_at(data, dec.layout.size)
            self._pending.append(dec.event((0, *dec.layout.hot(buf)), buf, 0))
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

    def drain(self, budget: int | None = None) -> list[ProbeEvent]:
        """Read what the kernel still holds (at most `budget` records: a command
        stopping at a deadline under a flood must not read a full ring first)
        and return every buffered event, sorted."""
        if self._ring is not None:
            self._read_ring(self._ring.size if budget is None else budget)
        elif self._bpf is not None:
            self._bpf.perf_buffer_poll(0)
        return self._release(None)

    def _read_ring(self, budget: int) -> None:
        """Decode up to `budget` records; the rest waits in the ring (so a flood
        cannot hold poll() forever), and what does not fit there is counted as
        lost by the programs."""
        ring, dec = self._ring, self._decoder
        assert ring is not None and dec is not None

        def other(data: memoryview) -> ProbeEvent | None:
            return None  # every program submits a whole struct vt_event

        lay = dec.layout
        self._pending += ring.read(lay.ring, lay.size, budget, dec.event, other)

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
