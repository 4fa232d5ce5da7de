"""`vethtrace nftrace cleanup [--all-namespaces]`: remove what `--nftrace` runs
that died left in firewalls (see collect/nftrace_state.py: on kernels with
the tables' owner flag the kernel has already done it, and this finds nothing)."""

from __future__ import annotations

from vethtrace.errors import ExitStatus, require_root


def run(action: str, everywhere: bool = False) -> int:
    require_root("vethtrace nftrace cleanup")
    from vethtrace.collect.nftrace_state import recover

    removed = recover(everywhere=everywhere)
    for line in removed:
        print(f"removed {line}")
    if not removed:
        print("nothing to clean: no vethtrace table of a finished run was found")
    return int(ExitStatus.OK)
