"""The probe source bcc compiles, and the flags it is compiled with.

vethtrace/probes/ (package data) holds the C: vethtrace.h (the event struct and the shared helpers)
and one file of programs per area. `PROBES_DIR` is the one place that says
where those files are found. `cflags` turns everything decided per kernel
(facts from BTF, the delivery and the function-probe mechanism) and the
filter program's encoding (collect/filter.py) into -D flags, so the text itself
never changes between kernels: the probe cache (collect/progcache.py) keys
on the text and the flags together. What changes between runs (the packet
filter, the -n namespaces, the VXLAN ports) is not a flag but map data
(collect/runcfg.py), so one compiled set serves every run.
"""

from __future__ import annotations

import os
from pathlib import Path

from vethtrace.collect import filter as filtermod
from vethtrace.collect.plan import AREAS
from vethtrace.packaged import packaged

PROBES_DIR = Path(os.environ.get("VETHTRACE_PROBES", packaged("probes")))
AREA_FILES = {"dev": "dev.c", "drop": "drop.c", "neigh": "neigh.c", "bridge": "bridge.c"}
HEADER_FILE = PROBES_DIR / "vethtrace.h"  # the event struct, shared by C and Python


def build_source(areas: tuple[str, ...] | list[str], function_mech: str | None) -> str:
    """One source text: vethtrace.h inlined, then the programs for `areas` (and
    kprobe.c for function probes). Inlined, not #included, because bcc rewrites
    map calls (`vt_events.ringbuf_reserve(...)`) only in its main file."""
    files = [AREA_FILES[a] for a in AREAS if a in areas]
    if function_mech in ("kprobe", "fentry"):
        files.append("kprobe.c")
    parts = [HEADER_FILE.read_text()]
    for name in files:
        text = (PROBES_DIR / name).read_text()
        parts.append(f"/* ---- {name} ---- */\n" + text.replace('#include "vethtrace.h"', ""))
    return "\n".join(parts)


def cflags(
    constants: dict[str, int],
    ringbuf: bool,
    function_mech: str | None = None,
    ringbuf_pages: int = 512,
) -> list[str]:
    flags = ["-Wno-macro-redefined"]
    flags += [f"-D{k}={v}" for k, v in constants.items()]
    flags += [f"-D{k}={v}" for k, v in filtermod.DEFINES.items()]
    if ringbuf:
        flags += ["-DVT_RINGBUF", f"-DVT_RINGBUF_PAGES={ringbuf_pages}"]
    dec_map = os.environ.get("VETHTRACE_DECIDE_MAP", "")  # bench: compare the maps
    if dec_map == "off":
        flags.append("-DVT_NO_DECIDE")
    elif dec_map.isdigit():
        flags.append(f"-DVT_DEC_MAP={int(dec_map)}")
    if function_mech == "kprobe":
        flags.append("-DVT_KPROBE")
    elif function_mech == "fentry":
        flags.append("-DVT_FENTRY")
    return flags
