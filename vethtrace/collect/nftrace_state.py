"""What `--nftrace` added to which namespace's firewall, on disk under
/run/vethtrace/nftrace/ (tmpfs, like lab state), and how it is undone.

Two layers keep a run from leaving a table behind:
1. The kernel: each table is created with `flags owner` (Linux 5.12+), which
   ties it to the netlink socket that made it; when the process dies for any
   reason, SIGKILL included, the kernel deletes the table itself.
2. This record, written BEFORE a table is added: where the kernel has no
   owner flag, the next `--nftrace` run (and `vethtrace nftrace cleanup`)
   deletes the tables of every run whose process is gone. Tables are named
   `vethtrace_trace_<pid>`, so the sweep can also find them without a record
   and never touches another live run's.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

STATE_DIR = Path(os.environ.get("VETHTRACE_NFTRACE_STATE", "/run/vethtrace/nftrace"))
TABLE_PREFIX = "vethtrace_trace_"
_OURS = re.compile(rf"^table (ip|ip6|inet|bridge) ({TABLE_PREFIX}(\d+))\b", re.M)


def table_name(pid: int | None = None) -> str:
    return f"{TABLE_PREFIX}{os.getpid() if pid is None else pid}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RunState:
    pid: int
    tables: list[dict[str, object]] = field(default_factory=list)  # netns, inode, family, table

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.pid}.json"

    def add(self, netns: str, inode: int, family: str, table: str) -> None:
        self.tables.append({"netns": netns, "inode": inode, "family": family, "table": table})
        self.save()

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": self.pid, "tables": self.tables}))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def stale_states() -> list[RunState]:
    """Records of runs whose process is gone (unreadable files count as stale)."""
    out = []
    for path in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            state = RunState(int(data["pid"]), list(data.get("tables", [])))
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if not alive(state.pid):
            out.append(state)
    return out


def stale_tables(listing: str) -> list[tuple[str, str]]:
    """(family, table) of vethtrace tables in `nft list tables` output whose run is gone."""
    return [(m[1], m[2]) for m in _OURS.finditer(listing) if not alive(int(m[3]))]


def _nft_here(cmd: str) -> tuple[int, str, str]:
    import nftables

    nft = nftables.Nftables()
    rc, out, err = nft.cmd(cmd)
    return int(rc), str(out), str(err)


def sweep(paths: dict[str, str]) -> list[str]:
    """Delete every stale vethtrace table in these namespaces (name -> path)
    and every stale record; returns what was removed, one line each."""
    from vethtrace import netns

    removed: list[str] = []
    for name, path in paths.items():
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue

        def inside(fd: int = fd, name: str = name) -> list[str]:
            netns._setns(fd)
            rc, out, _err = _nft_here("list tables")
            done = []
            for family, table in stale_tables(out) if rc == 0 else []:
                if _nft_here(f"delete table {family} {table}")[0] == 0:
                    done.append(f"{name}: table {family} {table}")
            return done

        try:
            removed += netns.in_thread(inside, "vethtrace-nftrace-sweep")
        except (OSError, ImportError):
            pass
        finally:
            os.close(fd)
    for state in stale_states():
        state.remove()
    return removed


def recorded_paths() -> dict[str, str]:
    """Namespaces named in stale records that still exist (by name or inode)."""
    from vethtrace import netns

    by_inode: dict[int, str] = {}
    for name in netns.named():
        try:
            by_inode[os.stat(netns.path_of(name)).st_ino] = name
        except OSError:
            continue
    by_inode[netns.ROOT_INODE] = netns.ROOT
    out: dict[str, str] = {}
    for state in stale_states():
        for t in state.tables:
            inode = int(str(t.get("inode", 0)))
            if inode in by_inode:
                name = by_inode[inode]
                out[name] = netns.path_of(name)
    return out


def recover(everywhere: bool = False) -> list[str]:
    """Clean up after runs that died: the namespaces their records name, or
    (`everywhere`) every namespace in /run/netns and the initial one."""
    from vethtrace import netns

    paths = recorded_paths()
    if everywhere:
        paths.update({name: netns.path_of(name) for name in netns.named()})
        paths.setdefault("root", netns.path_of(netns.ROOT))
    return sweep(paths)
