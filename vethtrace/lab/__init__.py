"""Labs: known topologies, good and broken, built in prefixed namespaces.

    from vethtrace.lab import up, down, load
    lab = up("seed", prefix="vt-")      # BuiltLab; lab.ns("host") == "vt-host"
    lab.scenario.expect.pings           # what should and should not work
    down("seed", prefix="vt-")

Every namespace gets the prefix, interfaces keep their scenario names inside
them, and the root namespace is never touched. What was built is recorded
under /run/vethtrace/labs/ before it is created, so `down` removes exactly
that — also after an `up` that died half-way — and never anything else.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vethtrace import netns
from vethtrace.errors import UserError, require_root
from vethtrace.lab import cni, docker, listen, namespaces, state
from vethtrace.lab.builder import build
from vethtrace.lab.scenario import Scenario, load, scenarios

__all__ = ["DEFAULT_PREFIX", "BuiltLab", "Scenario", "built", "down", "load", "scenarios", "up"]

DEFAULT_PREFIX = "vt-"


def default_prefix() -> str:
    return os.environ.get("VETHTRACE_LAB_PREFIX", DEFAULT_PREFIX)


@dataclass
class BuiltLab:
    scenario: Scenario
    prefix: str
    namespaces: list[str] = field(default_factory=list)  # real names
    fresh: bool = True  # False: it was already up, nothing was changed
    docker_host: str | None = None  # the lab's own dockerd (DOCKER_HOST), if it has one

    @property
    def name(self) -> str:
        return self.scenario.name

    def ns(self, short: str) -> str:
        """The real namespace name of the scenario's namespace `short`; a lab container
        (`docker:web`) keeps its name, which vethtrace resolves through `docker_host`."""
        docker_ = self.scenario.docker
        if docker_ is not None and docker_.container(short):
            return short
        if short not in {n.name for n in self.scenario.netns}:
            raise KeyError(f"scenario {self.name} has no namespace {short!r}")
        return self.prefix + short

    def path(self, short: str) -> str:
        """A path to the namespace `short` names (a /run/netns file, or a lab
        container's /proc/PID/ns/net as its daemon says)."""
        docker_ = self.scenario.docker
        if docker_ is not None and docker_.container(short):
            st = state.find(self.name, self.prefix)
            if st is None:
                raise KeyError(f"lab {self.name} is not up")
            return docker.netns_path(st, short.split(":", 1)[1])
        return netns.path_of(self.ns(short))

    @property
    def env(self) -> dict[str, str]:
        """The environment in which `docker:NAME` means this lab's containers."""
        return {**os.environ, **({"DOCKER_HOST": self.docker_host} if self.docker_host else {})}

    def down(self) -> None:
        down(self.name, self.prefix)


@contextmanager
def _locked() -> Iterator[None]:
    """One lab operation at a time on this machine (ownership checks stay true)."""
    state.STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(state.STATE_DIR / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_prefix(prefix: str) -> None:
    if not prefix or "/" in prefix or prefix.startswith(".") or len(prefix) > 40:
        raise UserError(f"bad lab prefix {prefix!r} (e.g. vt- or vtx-alice-)")


def up(
    name: str, prefix: str = DEFAULT_PREFIX, on_built: Callable[[], object] | None = None
) -> BuiltLab:
    """Build scenario `name` with namespace prefix `prefix`; idempotent.

    Raises UserError (nothing left behind) on a bad scenario, a name clash, or
    a failure while building; a failed build, or one interrupted (Ctrl-C,
    SIGTERM: the command turns both into KeyboardInterrupt), is rolled back
    before raising. `on_built` runs once everything is built, before the lab is
    recorded complete: the command makes signals harmless there, so a lab is
    either rolled back or complete and kept, never left half-way.
    """
    _check_prefix(prefix)
    scn = load(name)
    require_root("vethtrace lab up")
    with _locked():
        _forget_vanished()
        st = state.find(scn.name, prefix)
        if st is not None:
            if st.complete and all(netns.exists(n) for n in st.namespaces) and _daemon_up(st):
                return BuiltLab(scn, prefix, list(st.namespaces), fresh=False,
                                docker_host=docker.host_of(st))  # fmt: skip
            _remove(st)  # leftovers of an up that died or was partly torn down
        for ns in scn.netns:
            real = prefix + ns.name
            if netns.exists(real):
                owner = state.owner_of(real)
                if owner is not None:
                    raise UserError(
                        f"namespace {real} belongs to lab {owner.name} (prefix "
                        f"{owner.prefix}); run `vethtrace lab down {owner.name}` first"
                    )
                raise UserError(
                    f"namespace {real} exists and was not built by vethtrace lab; "
                    "remove it or pick another prefix (VETHTRACE_LAB_PREFIX)"
                )
        st = state.LabState(name=scn.name, prefix=prefix, source=str(scn.path))
        st.save()
        try:
            build(scn, prefix, st)
            if on_built is not None:
                on_built()
            st.complete = True
            st.save()
        except BaseException as exc:
            _remove(st)
            if isinstance(exc, UserError):
                raise UserError(f"lab {scn.name}: {exc} (rolled back, nothing left)") from None
            raise
        return BuiltLab(scn, prefix, list(st.namespaces), docker_host=docker.host_of(st))


def _daemon_up(st: state.LabState) -> bool:
    """The lab's dockerd still answers (true for labs without one)."""
    d = docker.daemon_of(st)
    return d is None or d.running()


def _remove(st: state.LabState) -> list[str]:
    notes = docker.teardown(st)  # the daemon and its containers hold namespaces
    listen.stop_all(st)  # a process would keep its namespace alive
    st.notes = notes + cni.teardown(st)  # DEL while the node namespaces still exist
    removed = [n for n in reversed(st.namespaces) if namespaces.remove(n)]
    st.remove()
    return removed


def down(name: str | None = None, prefix: str = DEFAULT_PREFIX) -> list[state.LabState]:
    """Remove lab `name` (or every lab built with `prefix`); returns what was removed.

    Raises UserError when there is nothing to remove.
    """
    _check_prefix(prefix)
    if name is not None and (name.endswith(".toml") or "/" in name):
        name = Path(name).stem  # labs built from a file are recorded by scenario name
    require_root("vethtrace lab down")
    with _locked():
        _forget_vanished()
        labs = [
            s for s in state.all_states() if s.prefix == prefix and (name is None or s.name == name)
        ]
        if not labs:
            if name is None:
                raise UserError(f"no labs are up (prefix {prefix})")
            raise UserError(f"lab {name} is not up (prefix {prefix})")
        for st in labs:
            _remove(st)
        return labs


def built(prefix: str | None = None) -> list[state.LabState]:
    """Labs recorded as built (all prefixes, or one) that still have a namespace."""
    return [
        s
        for s in state.all_states()
        if (prefix is None or s.prefix == prefix) and any(netns.exists(n) for n in s.namespaces)
    ]


def _forget_vanished() -> None:
    """Drop records whose namespaces are all gone (deleted by hand, or by a test
    run's safety net); called under the lock, so no `up` is between record and create."""
    for st in state.all_states():
        if not any(netns.exists(n) for n in st.namespaces):
            docker.teardown(st)  # a daemon outliving its namespace's name is still ours
            cni.teardown(st)  # nothing left to DEL; its IPAM directory goes
            st.remove()
