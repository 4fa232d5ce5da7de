"""The probe sets the commands use, compiled ahead of need (set-up, `doctor`).

Why: bcc's compile takes ~1 s idle and several on a busy machine; it used to
happen on a command's first start with each new filter or `-n` scope. Now the
filter, the scope and the VXLAN ports are map data (runcfg.py) and the ring
buffer's size is set at load, so a probe set depends only on its areas and
options: VARIANTS names the few the commands use, `prepare()` compiles each
into the probe cache (progcache.py) or checks that it loads from there.
`scripts/setup.sh` runs it through `vethtrace doctor --prepare`, and `doctor`
prepares them too, so the first `trace`, `ping` or `watch` loads in
milliseconds whatever its filter.

Each compile attaches its programs for a moment with nothing to report
(vt_cfg.ready unset: collect/runcfg.py) and detaches them at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from vethtrace.collect import headers as headersmod
from vethtrace.collect import plan as planmod
from vethtrace.collect.kfacts import FUNCTION_PARAMS, kernel_constants
from vethtrace.collect.source import build_source, cflags

# BpfCollector options by command (the filter and the scope are run-time data);
# the commands construct their collectors from these.
VARIANTS: dict[str, dict[str, Any]] = {
    "trace/watch": {},  # every area, function probes where the kernel has them
    "ping": {"areas": ("dev", "drop", "neigh"), "functions": False},
    "record": {"areas": ("drop",), "functions": False, "without": ("consume_skb",)},
}


@dataclass
class Prepared:
    variant: str
    seconds: float
    from_cache: bool  # False: compiled now (and cached when the plan allows)
    cacheable: bool  # the plan's programs go in the cache (raw tracepoints, ring buffer)


def prepare() -> list[Prepared]:
    """Compile each variant into the cache, or load it from there; raises
    UserError as BpfCollector.start does (not root, no headers, ...)."""
    from vethtrace.collect.bpf import BpfCollector

    out = []
    for name, opts in VARIANTS.items():
        t0 = time.monotonic()
        with BpfCollector(**opts) as col:
            col.start()
            out.append(Prepared(name, time.monotonic() - t0, col.from_cache, col.cacheable))
    return out


def compile_only(
    areas: tuple[str, ...] | list[str] = planmod.AREAS, function_mech: str | None = None
) -> float:
    """Compile (and load nothing beyond what bcc autoloads) for tests; seconds.

    With function_mech="kprobe" the kprobe programs are compiled and loaded into
    the kernel as BPF_PROG_TYPE_KPROBE (they attach nowhere)."""
    headersmod.prepare()
    from bcc import BPF

    consts = kernel_constants(functions=function_mech is not None)
    src = build_source(areas, function_mech)
    t0 = time.monotonic()
    b = BPF(text=src.encode(), cflags=cflags(consts, True, function_mech))
    try:
        if function_mech == "kprobe":
            for func in FUNCTION_PARAMS:
                if any(k.startswith(f"VT_KARG_{func.upper()}_") for k in consts):
                    b.load_func(f"vt_kp_{func}".encode(), BPF.KPROBE)
        return time.monotonic() - t0
    finally:
        b.cleanup()
