"""Lab helpers for tests: build a scenario under the test run's own prefix, always
remove it, and check its stated pings with the system's `ping` (independent of
vethtrace's code).

    from tests.labs import built_lab, lab_fixture

    def test_x(prefix):
        with built_lab("seed", prefix) as lab:
            ns = lab.ns("song")               # e.g. "vtt3f2a1-song"

    seed_lab = lab_fixture("seed")            # module-scoped fixture: one build per module
    def test_y(seed_lab): ...
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import new_prefix
from vethtrace.lab import BuiltLab, up
from vethtrace.lab.scenario import PingExpect, TcpExpect
from vethtrace.netns import exists


@contextmanager
def built_lab(name: str, prefix: str | None = None) -> Iterator[BuiltLab]:
    """Build scenario `name` (prefix: a fresh test prefix when None); always remove it."""
    prefix = prefix or new_prefix()
    lab = up(name, prefix)
    try:
        yield lab
    finally:
        if any(exists(n) for n in lab.namespaces):
            lab.down()


def lab_fixture(name: str, scope: Any = "module") -> Any:
    """A pytest fixture (module-scoped by default) yielding BuiltLab for `name`.
    Assign it to a module-level name: `seed_lab = lab_fixture("seed")`."""

    @pytest.fixture(scope=scope)
    def _fixture() -> Iterator[BuiltLab]:
        with built_lab(name) as lab:
            yield lab

    return _fixture


def _enter(src_ns: str) -> list[str]:
    """Command prefix running a program in src_ns: a /run/netns name, or a path to a
    namespace file (a lab container's /proc/PID/ns/net, see BuiltLab.path)."""
    if src_ns.startswith("/"):
        return ["nsenter", f"--net={src_ns}"]
    return ["ip", "netns", "exec", src_ns]


def ping(src_ns: str, ip: str, size: int | None = None, timeout: int = 1) -> bool:
    """One `ping -c1 -W1` from namespace src_ns (a real name or a namespace path); True
    when answered. With size, sends that payload with "don't fragment" (MTU tests)."""
    cmd = [*_enter(src_ns), "ping", "-n", "-q", "-c1", f"-W{timeout}", ip]
    if size is not None:
        cmd[-1:-1] = ["-s", str(size), "-M", "do"]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def check_pings(lab: BuiltLab, tries: int = 3) -> list[tuple[PingExpect, bool]]:
    """Every stated ping of the lab, in parallel; returns (expectation, reached).

    An expected success is retried (tries) because the first ping can be lost
    while ARP and the bridge settle; an expected failure is tried once, with
    the same -W1 (a late reply would not make it a success anyway).
    """

    def one(p: PingExpect) -> bool:
        return any(ping(lab.path(p.source), p.to, p.size) for _ in range(tries if p.ok else 1))

    pings = lab.scenario.expect.pings
    with ThreadPoolExecutor(max_workers=max(1, len(pings))) as pool:
        results = list(pool.map(one, pings))
    return list(zip(pings, results, strict=True))


def connect(src_ns: str, ip: str, port: int, timeout: int = 1) -> bool:
    """One TCP connect from namespace src_ns (bash's /dev/tcp, not our code); True
    when the connection was accepted."""
    script = f"exec 3<>/dev/tcp/{ip}/{port}"
    cmd = [*_enter(src_ns), "timeout", str(timeout), "bash", "-c", script]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def check_tcp(lab: BuiltLab, tries: int = 3) -> list[tuple[TcpExpect, bool]]:
    """Every stated TCP connection of the lab; (expectation, accepted), retried like pings."""

    def one(t: TcpExpect) -> bool:
        return any(connect(lab.path(t.source), t.to, t.port) for _ in range(tries if t.ok else 1))

    return [(t, one(t)) for t in lab.scenario.expect.tcp]


def ipv4_of(ns: str, dev: str) -> str:
    """The first IPv4 address of `dev` in namespace `ns`, as `ip -j` reports it."""
    out = subprocess.run(["ip", "-j", "-4", "-n", ns, "addr", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return str(json.loads(out)[0]["addr_info"][0]["local"])


def overlay_on_port(where: Path, port: int) -> Path:
    """The shipped `overlay-vxlan` lab with both VXLAN devices on UDP `port`
    (flannel's 8472...), written into `where`: its path, for built_lab."""
    from vethtrace.lab.scenario import shipped_dir

    text = (shipped_dir() / "overlay-vxlan.toml").read_text()
    assert text.count("dstport = 4789") == 2
    variant = where / f"overlay-vxlan-{port}.toml"
    variant.write_text(text.replace('name = "overlay-vxlan"', f'name = "overlay-vxlan-{port}"')
                       .replace("dstport = 4789", f"dstport = {port}"))  # fmt: skip
    return variant
