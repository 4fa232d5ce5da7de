"""Which kernel headers bcc will compile against, and saying so honestly.

bcc needs kernel headers to compile any program, even ours, which reads every
kernel structure through BTF offsets and never through header layouts. So
"generic" headers (another kernel's) are fine for compiling and are labelled
as such; a matching /lib/modules/$(uname -r)/build is used as-is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

GENERIC_ROOT = Path("/var/lib/vethtrace/headers")


@dataclass(frozen=True)
class Headers:
    kind: str  # "matching" | "generic" | "missing"
    path: str | None
    label: str  # for doctor/plan: "matching 6.18.1", "generic 6.1.0-56-amd64", "missing"


def _has_headers(path: Path) -> bool:
    return (path / "include" / "linux").is_dir() or (path / "include" / "generated").is_dir()


def find(release: str | None = None, generic_root: Path = GENERIC_ROOT) -> Headers:
    """Matching headers for `release` (default: running kernel), else the
    generic tree set-up merged, else missing."""
    release = release or os.uname().release
    build = Path("/lib/modules") / release / "build"
    if build.is_dir() and _has_headers(build):
        return Headers("matching", str(build), f"matching {release}")
    if generic_root.is_dir():
        for tree in sorted(generic_root.iterdir(), reverse=True):
            if tree.is_dir() and _has_headers(tree):
                return Headers("generic", str(tree), f"generic {tree.name}")
    return Headers("missing", None, "missing")


def prepare(headers: Headers | None = None) -> Headers:
    """Point bcc at the headers (BCC_KERNEL_SOURCE only for the generic tree;
    bcc finds matching ones by itself). Leaves an explicit user setting alone."""
    headers = headers or find()
    if headers.kind == "generic" and headers.path and "BCC_KERNEL_SOURCE" not in os.environ:
        os.environ["BCC_KERNEL_SOURCE"] = headers.path
    return headers
