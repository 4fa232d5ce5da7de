"""`./run demo`: the built-in scenario end to end, and an exit status that
says when a step did not come out the way the scenario expects."""

from __future__ import annotations

from typing import Any

import pytest

from vethtrace import demo
from vethtrace.netns import named

pytestmark = pytest.mark.privileged


def test_demo_on_seed_matches_the_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["seed"]) == 0
    out = capsys.readouterr()
    assert "address-on-bridge-port" in out.out and "diverted" in out.out
    assert not [n for n in named() if n.startswith(demo.PREFIX)]


def test_demo_fails_when_a_step_disagrees(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = demo._command

    def command(name: str) -> Any:
        if name == "ping":
            return lambda **_: 0  # "reachable", where seed's ping must fail
        return real(name)

    monkeypatch.setattr(demo, "_command", command)
    assert demo.main(["seed"]) == 1
    err = capsys.readouterr().err
    assert "exited 0; the seed scenario expects 1" in err
    assert not [n for n in named() if n.startswith(demo.PREFIX)]
