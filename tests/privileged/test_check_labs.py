"""`check` against real labs: every broken scenario that names rules makes
those rules fire on its stated culprit; pasting the finding's fix commands
(run exactly as printed) makes the finding go away and the scenario's
failing pings succeed; healthy scenarios give nothing at warning or above.

Scenarios are the data in vethtrace/lab/scenarios (the lab engineer's and check-*);
each test builds its own lab, because applying a fix changes it.
"""

from __future__ import annotations

import shlex
import subprocess
import time

import pytest

from tests.labs import built_lab, check_pings, ping
from vethtrace.diagnose.check import run_rules
from vethtrace.lab import load, scenarios
from vethtrace.lab.scenario import Scenario
from vethtrace.model import Finding
from vethtrace.topology import discover

pytestmark = pytest.mark.privileged

RULED = [n for n in scenarios() if load(n).expect.rules]
# Labs with a Docker daemon of their own are checked in test_lab_docker.py (with the
# daemon's DOCKER_HOST; their fixes are docker commands against it).
BROKEN = [n for n in RULED if not load(n).docker]
HEALTHY = ["seed-fixed", "seed-uplink", "bridge-two", "cni-bridge-masq", "cni-firewall",
           "cni-macvlan", "cni-portmap", "cni-ptp", "cni-tuning", "calico-routed",
           "docker-forward", "bridge-flood-off-learning", "neigh-static",
           "overlay-vxlan"]  # fmt: skip
NOT_IN_LABS = {"address-on-bond-slave", "macvlan-lower-address", "orphan-veth",
               # a published port with nothing listening: test_lab_docker.py builds it
               "container-port-no-listener",
               # a legacy (x_tables) table: test_nftrace.py loads one with iptables-legacy
               "iptables-legacy",
               # the catch-all for decisions no other id names
               "path-broken", "overlay-path-broken"}  # fmt: skip


def check(namespaces: list[str]) -> list[Finding]:
    return run_rules(discover(namespaces), namespaces)


def run_fix(cmd: str) -> None:
    proc = subprocess.run(shlex.split(cmd), capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, f"fix command failed: {cmd}: {proc.stderr.strip()}"


def reaches(src: str, ip: str, size: int | None, seconds: float = 4.0) -> bool:
    """Ping until answered or `seconds` pass (ARP and the bridge settle after a fix)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if ping(src, ip, size):
            return True
    return False


def _on_culprit(scn: Scenario, prefix: str, hits: list[Finding]) -> bool:
    c = scn.expect.culprit
    assert c is not None, f"{scn.name} names rules but no culprit"
    return any(c.matches(prefix, f.netns, f.interface) for f in hits)


def test_every_rule_has_a_lab_scenario() -> None:
    from vethtrace.diagnose.check import rule_ids

    covered = {r for n in RULED for r in load(n).expect.rules}
    # Not buildable from a scenario file here: bonds (this kernel has no bonding
    # driver), a macvlan moved into another namespace, an orphaned veth. Those
    # are built by hand in test_check_manual.py and unit-tested on snapshots.
    assert set(rule_ids()) - covered <= NOT_IN_LABS


@pytest.mark.parametrize("name", BROKEN)
def test_rule_fires_on_culprit_and_fix_works(name: str) -> None:
    scn = load(name)
    with built_lab(name) as lab:
        findings = check(lab.namespaces)
        hits = [f for f in findings if f.rule in scn.expect.rules]
        shown = [(f.rule, f.netns, f.interface) for f in findings]
        assert hits, f"{name}: none of {scn.expect.rules} fired; got {shown}"
        assert _on_culprit(scn, lab.prefix, hits), shown
        for f in hits:
            assert f.explanation and f.summary and f.fix, f
            assert all(lab.prefix in cmd for cmd in f.fix), f.fix  # real names, pasteable

        # The scenario really is broken (and working) the way it says.
        wrong = [p for p, reached in check_pings(lab) if reached != p.ok]
        assert not wrong, f"{name}: stated pings disagree before the fix: {wrong}"
        failing = [p for p in scn.expect.pings if not p.ok]

        for f in hits:
            for cmd in f.fix:
                run_fix(cmd)

        after = check(lab.namespaces)
        left = [(f.rule, f.netns, f.interface) for f in after if f.rule in scn.expect.rules]
        assert not left, f"{name}: still there after the fix: {left}"
        assert not [f for f in after if f.severity != "info"], after
        for p in failing:
            assert reaches(lab.ns(p.source), p.to, p.size), f"{name}: {p} still fails after fix"


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_scenarios_are_clean(name: str) -> None:
    with built_lab(name) as lab:
        findings = check(lab.namespaces)
        loud = [(f.rule, f.netns, f.interface, f.summary) for f in findings
                if f.severity in ("error", "warning")]
        assert not loud, f"false alarm on healthy {name}: {loud}"
