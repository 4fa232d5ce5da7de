"""Path prediction against the kernel: every lab in vethtrace/lab/scenarios is built, each
ping its scenario states is predicted from the discovered tables and sent for
real (`ping`, independent of vethtrace); the prediction must agree with both
the scenario's expectation and the kernel. A disagreement prints the path."""

from __future__ import annotations

import pytest

from tests.labs import built_lab, ping
from vethtrace.diagnose.path import Flow, predict
from vethtrace.lab import load, scenarios
from vethtrace.render.path import show
from vethtrace.topology import discover

pytestmark = pytest.mark.privileged

# Labs with a Docker daemon of their own: their containers are docker:NAME, resolved
# through the lab's DOCKER_HOST; test_lab_docker.py covers them.
LABS = sorted(n for n in scenarios() if not load(n).docker)

# Labs where the prediction disagrees with the real ping (the kernel agrees with the
# scenario): what the model does not evaluate yet. strict: each flips to a failure
# once the model gets the lab right, and its mark goes.
PATH_WRONG: dict[str, str] = {}  # none today: every lab is predicted as the kernel decides


def _explain(pred: object) -> str:
    from rich.console import Console

    console = Console(width=120, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    show(console, pred)  # type: ignore[arg-type]
    return console.export_text()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=PATH_WRONG[n]))
        if n in PATH_WRONG
        else n
        for n in LABS
    ],
)
def test_prediction_agrees_with_lab_and_kernel(name: str) -> None:
    with built_lab(name) as lab:
        pings = lab.scenario.expect.pings
        if not pings:
            pytest.skip(f"{name} states no pings")
        topo = discover([lab.ns(n.name) for n in lab.scenario.netns])
        for p in pings:
            size = 28 + (p.size if p.size is not None else 56)
            pred = predict(topo, Flow(lab.ns(p.source), p.to, "icmp", size=size))
            real = any(ping(lab.ns(p.source), p.to, p.size) for _ in range(3 if p.ok else 1))
            what = f"{name}: {p.source} -> {p.to} (expected {'ok' if p.ok else 'fail'})"
            assert real == p.ok, f"{what}: the kernel disagrees with the scenario"
            assert pred.ok == real, f"{what}: predicted {pred.ok}\n{_explain(pred)}"
            if not real:
                assert pred.first_failure is not None, (
                    f"{what}: no failing decision\n{_explain(pred)}"
                )
