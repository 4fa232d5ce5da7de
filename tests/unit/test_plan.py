"""Probe plan wording (pure logic) and the trials' honesty without privileges."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import as_nobody
from vethtrace.collect import plan as planmod
from vethtrace.collect.plan import Plan, PointChoice


def _plan(mechs: dict[str, str]) -> Plan:
    choices = []
    for point, mech in mechs.items():
        blind = planmod.TRACEPOINT_BLIND.get(point, "") if mech == "tracepoint" else ""
        choices.append(PointChoice(point, mech, ["x"], blind))
    return Plan(choices, "ring buffer", "generic 6.1")


def test_all_tracepoints_plan_says_so_and_names_blind_spots() -> None:
    plan = _plan({p: "tracepoint" for p in planmod.POINTS})
    assert plan.one_line() == "all tracepoints, ring buffer"
    blind = plan.blind_line()
    assert "veth transmit: no veth_xmit" in blind
    assert "bridge receive: no rx_handler" in blind
    assert "drops" not in blind
    d = plan.describe()
    assert d["delivery"] == "ring buffer"
    assert [p["point"] for p in d["points"]] == list(planmod.POINTS)  # type: ignore[index]


def test_mixed_plan_groups_points_by_mechanism() -> None:
    mechs = {p: "tracepoint" for p in planmod.POINTS}
    mechs["veth transmit"] = mechs["bridge receive"] = "kprobe"
    plan = _plan(mechs)
    line = plan.one_line()
    assert line.startswith("kprobe: veth transmit, bridge receive; tracepoint: device receive")
    assert line.endswith("; ring buffer")
    assert plan.blind_line() == ""
    assert plan.mechanism_for_functions() == "kprobe"


def _as_nobody(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*as_nobody(), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv")
def test_trials_fail_honestly_without_privileges() -> None:
    """Unprivileged, every BPF trial is refused and doctor exits 1."""
    res = _as_nobody(
        sys.executable, "-c",
        "from vethtrace.collect import plan; print(plan.try_raw_tracepoint().reason)",
    )  # fmt: skip
    assert "EPERM" in res.stdout, res.stderr
    res = _as_nobody(str(Path(sys.executable).parent / "vethtrace"), "doctor", "--json")
    report = json.loads(res.stdout)
    assert res.returncode == 1
    assert report["tracing_possible"] is False
    assert report["checks"]["root"]["ok"] is False
    assert report["checks"]["tracepoints"]["ok"] is False
