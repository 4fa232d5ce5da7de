"""`vethtrace doctor [--json] [--prepare]`: what this machine lets vethtrace see, and why.

Every answer comes from trying (a no-op BPF load, a perf kprobe event, a real
bcc compile), not from config files: configs lie about lockdown, missing
capabilities and refused fentry. Exit 0 when tracing is possible at all,
1 when it is not.

The bcc check compiles the probe sets trace/watch, ping and record use into
the probe cache (collect/prepare.py), or loads them from it: after a first
`doctor` (or set-up, which runs `doctor --prepare`: only that step, one line
per set, exit 0, or 2 with the reason) every command starts without bcc.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from vethtrace.collect import btf as btfmod
from vethtrace.collect import headers as headersmod
from vethtrace.collect import plan as planmod
from vethtrace.console import make_console
from vethtrace.errors import ExitStatus
from vethtrace.render.doctor import show

CAPS = {12: "CAP_NET_ADMIN", 21: "CAP_SYS_ADMIN", 38: "CAP_PERFMON", 39: "CAP_BPF"}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _caps() -> tuple[bool, str]:
    eff = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                eff = int(line.split()[1], 16)
    have = [n for bit, n in CAPS.items() if eff >> bit & 1]
    missing = [n for bit, n in CAPS.items() if not eff >> bit & 1]
    bpf_ok = ("CAP_BPF" in have and "CAP_PERFMON" in have) or "CAP_SYS_ADMIN" in have
    detail = "has " + (", ".join(have) or "none")
    if missing:
        detail += "; lacks " + ", ".join(missing)
    return bpf_ok and "CAP_NET_ADMIN" in have, detail


def _bcc_compile() -> tuple[bool, str, float | None]:
    """Prepare the commands' probe sets (compiled, or loaded from the cache);
    seconds: compile time spent now (0.0 when everything came from the cache)."""
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        return False, f"import failed: {exc} (apt install python3-bpfcc)", None
    if os.geteuid() != 0:
        return False, "imported; trial compile needs root", None
    from vethtrace.collect.prepare import prepare

    try:
        done = prepare()
    except Exception as exc:
        return False, f"trial compile failed: {str(exc).splitlines()[0]}", None
    compiled = [p for p in done if not p.from_cache]
    seconds = sum(p.seconds for p in compiled)
    if not compiled:
        what = f"probe sets ({', '.join(p.variant for p in done)}) load from the cache"
    else:
        what = (f"probe sets {', '.join(p.variant for p in compiled)} compiled and loaded "
                f"in {seconds:.2f} s")  # fmt: skip
        if all(p.cacheable for p in compiled):
            what += ", cached for the next start"
    return True, f"imported; {what}", seconds


def _prepare_only() -> int:
    """`doctor --prepare` (set-up): compile the probe sets into the cache."""
    from vethtrace.collect.prepare import prepare
    from vethtrace.errors import UserError

    if os.geteuid() != 0:
        raise UserError("doctor --prepare needs root (it loads the probes to cache them)")
    for p in prepare():
        how = "loaded from the cache" if p.from_cache else "compiled"
        where = "" if p.cacheable else " (this plan is not cacheable: compiled at every start)"
        print(f"probes for {p.variant}: {how} in {p.seconds:.2f} s{where}")
    return int(ExitStatus.OK)


def gather() -> dict[str, Any]:
    checks: list[Check] = []
    root = os.geteuid() == 0
    checks.append(Check("root", root, "running as root" if root else "not root: run with sudo"))
    ok, detail = _caps()
    checks.append(Check("capabilities", ok, detail))
    try:
        b = btfmod.vmlinux()
        checks.append(Check("btf", True, f"{btfmod.VMLINUX} ({b.count} types)"))
        btf_ok = True
    except btfmod.BtfError as exc:
        checks.append(Check("btf", False, f"{exc}: struct offsets cannot be known"))
        btf_ok = False
    kp = planmod.try_kprobe()
    checks.append(Check("kprobes", kp.ok, kp.reason))
    fe = planmod.try_fentry() if btf_ok else planmod.Trial(False, "needs BTF")
    checks.append(Check("fentry", fe.ok, fe.reason))
    rt = planmod.try_raw_tracepoint()
    checks.append(Check("tracepoints", rt.ok, rt.reason))
    tfs = planmod.tracefs()
    checks.append(
        Check(
            "tracefs",
            tfs is not None,
            f"mounted at {tfs}"
            if tfs
            else "not mounted (raw tracepoints do not need it; "
            "mount -t tracefs nodev /sys/kernel/tracing for classic tools)",
        )
    )
    rb = planmod.ringbuf_supported()
    checks.append(Check("ring_buffer", rb.ok, rb.reason if rb.ok else rb.reason + "; perf buffer"))
    hdr = headersmod.find()
    hdr_detail = {
        "matching": f"{hdr.path} (matches the running kernel)",
        "generic": f"{hdr.path}: another kernel's headers, used only to compile; "
        "layouts come from BTF",
        "missing": "none found: bcc cannot compile (run ./run setup)",
    }[hdr.kind]
    checks.append(Check("headers", hdr.kind != "missing", f"{hdr.label}: {hdr_detail}"))
    headersmod.prepare(hdr)
    bcc_ok, bcc_detail, compile_s = _bcc_compile()
    checks.append(Check("bcc", bcc_ok, bcc_detail))
    try:
        import scapy

        checks.append(Check("scapy", True, f"scapy {scapy.VERSION} (sniffers)"))
    except ImportError:
        checks.append(Check("scapy", False, "missing: no per-interface sniffers"))
    plan = planmod.decide() if btf_ok else None
    if plan:
        plan.headers = hdr.label
    tracing = root and btf_ok and rt.ok and bcc_ok and hdr.kind != "missing"
    return {
        "tracing_possible": tracing,
        "kernel": os.uname().release,
        "checks": {c.name: asdict(c) for c in checks},
        "compile_seconds": compile_s,
        "plan": plan.describe() if plan else None,
        "plan_line": plan.one_line() if plan else None,
    }


def run(as_json: bool = False, prepare: bool = False, **_: object) -> int:
    if prepare:
        return _prepare_only()
    started = time.monotonic()
    report = gather()
    status = ExitStatus.OK if report["tracing_possible"] else ExitStatus.FINDINGS
    if as_json:
        print(json.dumps(report, indent=2))
        return int(status)
    show(make_console(), report, time.monotonic() - started)
    return int(status)
