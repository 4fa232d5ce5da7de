"""Rules on recorded topologies (no root): samples/snapshots/check-*.json
(check-<lab>.json, or just <lab>.json for the check-* labs) were discovered
from the real labs of vethtrace/lab/scenarios, built with the prefix "vtxck-". Each
broken lab's stated rules must fire on its stated culprit, with fixes naming
the real interfaces; healthy labs must stay quiet.

Re-record (as root) after changing a lab or the model:
    .venv/bin/python -m tests.unit.test_check_snapshots record
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vethtrace.diagnose.check import run_rules
from vethtrace.lab import load, scenarios
from vethtrace.topology import snapshot

SNAPSHOTS = Path(__file__).resolve().parent.parent.parent / "samples" / "snapshots"
PREFIX = "vtxck-"
HEALTHY = ["seed-fixed", "seed-uplink", "bridge-two"]


def path_of(name: str) -> Path:
    return SNAPSHOTS / (f"{name}.json" if name.startswith("check-") else f"check-{name}.json")


def recorded() -> list[str]:
    known = set(scenarios())
    return sorted(p.stem if p.stem in known else p.stem.removeprefix("check-")
                  for p in SNAPSHOTS.glob("check-*.json"))


BROKEN = [n for n in recorded() if n not in HEALTHY]


def test_snapshots_exist() -> None:
    assert set(HEALTHY) <= set(recorded())
    assert len(BROKEN) >= 10


@pytest.mark.parametrize("name", BROKEN)
def test_stated_rules_fire_on_culprit(name: str) -> None:
    scn = load(name)
    topo = snapshot.load(str(path_of(name)))
    findings = run_rules(topo)
    hits = [f for f in findings if f.rule in scn.expect.rules]
    assert hits, [(f.rule, f.netns, f.interface) for f in findings]
    assert scn.expect.culprit is not None
    assert any(scn.expect.culprit.matches(PREFIX, f.netns, f.interface) for f in hits)
    for f in hits:
        assert f.interface and f.interface in f.summary
        assert all(PREFIX in cmd for cmd in f.fix)


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_are_quiet(name: str) -> None:
    topo = snapshot.load(str(path_of(name)))
    loud = [(f.rule, f.netns, f.interface) for f in run_rules(topo) if f.severity != "info"]
    assert not loud


def test_netns_filter_keeps_only_those() -> None:
    topo = snapshot.load(str(path_of("seed")))
    every = run_rules(topo)
    assert {f.netns for f in every} == {PREFIX + "host", PREFIX + "song"}
    only = run_rules(topo, [PREFIX + "song"])
    assert only and {f.netns for f in only} == {PREFIX + "song"}
    assert run_rules(topo, ["nowhere"]) == []


def test_sorted_by_severity() -> None:
    topo = snapshot.load(str(path_of("seed")))
    order = [f.severity for f in run_rules(topo)]
    assert order == sorted(order, key=["error", "warning", "info"].index)


def record() -> None:
    """Build every lab that names rules (and the healthy ones), snapshot it."""
    from tests.labs import built_lab
    from vethtrace.topology import discover

    SNAPSHOTS.mkdir(parents=True, exist_ok=True)
    names = [n for n in scenarios() if load(n).expect.rules] + HEALTHY
    for name in names:
        with built_lab(name, PREFIX) as lab:
            topo = discover(lab.namespaces)
            topo.notes = [n for n in topo.notes if "pid 1" not in n]
            snapshot.save(topo, str(path_of(name)))
            print("recorded", name)


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    record()
