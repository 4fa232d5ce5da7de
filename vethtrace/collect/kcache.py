"""Facts derived from the running kernel's BTF, cached on disk per kernel build.

Why: parsing 5 MB of BTF in Python costs 0.1-0.3 s on every start, and
`vethtrace ping` must reach a verdict in about two seconds, most of which bcc's
compiler already takes. The facts (struct offsets, tracepoint argument
positions, drop-reason names) only change with the kernel build, so they are
keyed by release, build string, BTF size and the code that derives them
(kfacts.py, plan.py, btf.py), and recomputed when any differs.
A cache that cannot be read or written is simply not used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from vethtrace.collect import btf as btfmod

CACHE_DIR = Path(os.environ.get("VETHTRACE_CACHE", "/var/cache/vethtrace"))
T = TypeVar("T")

_DERIVERS = ("kfacts.py", "plan.py", "btf.py")
_memory: dict[str, Any] | None = None


def _path() -> Path:
    uname = os.uname()
    try:
        size = btfmod.VMLINUX.stat().st_size
    except OSError:
        size = 0
    # a module loaded later (bridge, veth) adds facts: part of the key too
    mods = ",".join(btfmod.loaded_modules())
    h = hashlib.sha1(f"{uname.release}\n{uname.version}\n{size}\n{mods}".encode())
    for name in _DERIVERS:  # the code deriving the facts is part of the key too
        with contextlib.suppress(OSError):
            h.update((Path(__file__).parent / name).read_bytes())
    key = h.hexdigest()[:12]
    return CACHE_DIR / f"kernel-{uname.release}-{key}.json"


def _load() -> dict[str, Any]:
    global _memory
    if _memory is None:
        try:
            _memory = json.loads(_path().read_text())
        except (OSError, ValueError):
            _memory = {}
    return _memory


def cached(name: str, compute: Callable[[], T]) -> T:
    """compute() once per kernel build; the value must be JSON-able as is."""
    facts = _load()
    if name in facts:
        return facts[name]
    value = compute()
    facts[name] = value
    with contextlib.suppress(OSError):
        save_json(_path(), facts)
    return value


def save_json(path: Path, doc: object) -> None:
    """Write a cache file whole or not at all (another vethtrace may be reading
    it): to a temporary name, then renamed over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def forget() -> None:
    """Drop the in-memory copy (tests)."""
    global _memory
    _memory = None
