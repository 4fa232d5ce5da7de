"""`check` on setups a scenario file cannot describe, built by hand with `ip`
in this run's own namespaces: a macvlan moved into another namespace while
its lower device keeps an address, and a veth whose peer's namespace leaked
out of sight (held only by a bind mount). Same contract as the lab tests:
the rule fires on the culprit, its fix (run as printed) clears it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from collections.abc import Iterator

import pytest

from tests.labs import ping
from vethtrace.diagnose.check import run_rules
from vethtrace.model import Finding
from vethtrace.topology import discover

pytestmark = pytest.mark.privileged


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@contextlib.contextmanager
def namespaces(prefix: str, *names: str) -> Iterator[list[str]]:
    real = [prefix + n for n in names]
    try:
        for n in real:
            sh("ip", "netns", "add", n)
        yield real
    finally:
        for n in real:
            subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)


def check(names: list[str], rule: str) -> list[Finding]:
    return [f for f in run_rules(discover(names), names) if f.rule == rule]


def apply(findings: list[Finding]) -> None:
    for f in findings:
        for cmd in f.fix:
            subprocess.run(shlex.split(cmd), check=True, capture_output=True, timeout=10)


def test_macvlan_lower_address(prefix: str) -> None:
    with namespaces(prefix, "h", "c", "e") as (h, c, e):
        # up0 (in h, 10.15.0.1) is the "NIC"; e is the network behind it; the
        # macvlan mv0 sits on up0 and lives in the container namespace c.
        sh("ip", "-n", h, "link", "add", "up0", "type", "veth", "peer", "name", "eth0",
           "netns", e)
        sh("ip", "-n", h, "addr", "add", "10.15.0.1/24", "dev", "up0")
        sh("ip", "-n", e, "addr", "add", "10.15.0.9/24", "dev", "eth0")
        sh("ip", "-n", h, "link", "add", "mv0", "link", "up0", "type", "macvlan", "mode",
           "bridge")
        sh("ip", "-n", h, "link", "set", "mv0", "netns", c)
        sh("ip", "-n", c, "addr", "add", "10.15.0.2/24", "dev", "mv0")
        for ns, dev in ((h, "up0"), (e, "eth0"), (c, "mv0"), (h, "lo"), (c, "lo"), (e, "lo")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        assert ping(e, "10.15.0.2")  # the wire reaches the macvlan...
        assert not ping(h, "10.15.0.2")  # ...but its own lower device cannot

        found = check([h, c, e], "macvlan-lower-address")
        assert [(f.netns, f.interface) for f in found] == [(h, "up0")]
        assert "mv0" in found[0].summary and c in found[0].summary
        apply(found)
        assert not check([h, c, e], "macvlan-lower-address")
        assert any(ping(h, "10.15.0.2") for _ in range(3))
        assert any(ping(h, "10.15.0.9") for _ in range(3))  # and the wire still works


def test_orphan_veth(prefix: str, tmp_path) -> None:
    hold = tmp_path / "netns-hold"
    hold.touch()
    with namespaces(prefix, "x", "y") as (x, y):
        sh("ip", "-n", x, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", y)
        sh("ip", "-n", x, "addr", "add", "10.16.0.1/24", "dev", "v0")
        sh("ip", "-n", x, "link", "set", "v0", "up")
        sh("mount", "--bind", f"/run/netns/{y}", str(hold))
        try:
            sh("ip", "netns", "del", y)  # y lives on, held only by the bind mount
            found = check([x], "orphan-veth")
            assert [(f.netns, f.interface) for f in found] == [(x, "v0")]
            assert not check([x], "no-carrier")  # one finding, the precise one
            apply(found)
            assert not check([x], "orphan-veth")
        finally:
            subprocess.run(["umount", str(hold)], capture_output=True, check=False)
    assert not os.path.exists(f"/run/netns/{y}")
