"""`report` prints what the live command printed: a real `ping --write` on the
seed lab, then `report` of its recording (as nobody), compared line by line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, as_nobody
from tests.labs import lab_fixture
from vethtrace.lab import BuiltLab

pytestmark = pytest.mark.privileged

seed_lab = lab_fixture("seed")
ENV = {**os.environ, "COLUMNS": "100", "TERM": "dumb"}


def _run(*args: str, cwd: Path, user: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*(user or []), str(VENV_BIN / "vethtrace"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=ENV,
        timeout=120,
    )




@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_report_of_a_ping_recording_matches_the_live_output(
    seed_lab: BuiltLab, tmp_path: Path, as_json: bool
) -> None:
    os.chmod(tmp_path, 0o755)
    flag = ["--json"] if as_json else []
    host, song = seed_lab.ns("host"), seed_lab.ns("song")
    live = _run("ping", "--from", host, song, "192.168.122.102", "--write", "run.vtrec",
                "--pcap", "run.pcapng", *flag, cwd=tmp_path)  # fmt: skip
    assert live.returncode == 1, live.stderr  # seed: not reachable
    os.chmod(tmp_path / "run.vtrec", 0o644)
    offline = _run("report", "run.vtrec", *flag, cwd=tmp_path, user=as_nobody())
    assert offline.returncode == 1, offline.stderr
    if as_json:
        got = json.loads(offline.stdout)
        recording = got.pop("recording")
        assert recording["complete"] and recording["pcap"] == "run.pcapng"
        assert got == json.loads(live.stdout)
        assert got["verdict"] == "diverted"
    else:
        banner, *rest = offline.stdout.splitlines()
        assert banner.startswith("recording run.vtrec: vethtrace ")
        assert rest == live.stdout.splitlines()
        assert any(line.startswith("DIVERTED") for line in rest)


def test_ping_and_trace_recordings_describe_the_probe_plan_alike(
    seed_lab: BuiltLab, tmp_path: Path
) -> None:
    """The header's "plan" is the probe plan's describe() for both writers (ping
    once wrote its dataclass fields instead), so readers need one shape."""
    from vethtrace.record import read

    host, song = seed_lab.ns("host"), seed_lab.ns("song")
    ping = _run("ping", "--from", host, song, "192.168.122.102", "-c", "1",
                "--write", "ping.vtrec", cwd=tmp_path)  # fmt: skip
    assert ping.returncode == 1, ping.stderr
    trace = _run("trace", "-n", host, "--duration", "0.5", "--write", "trace.vtrec",
                 cwd=tmp_path)  # fmt: skip
    assert trace.returncode == 0, trace.stderr
    plans = [read(tmp_path / f"{n}.vtrec").header["plan"] for n in ("ping", "trace")]
    assert set(plans[0]) == set(plans[1]) == {"delivery", "headers", "points"}
    fields = [{tuple(sorted(p)) for p in plan["points"]} for plan in plans]
    assert fields[0] == fields[1] == {("blind_spot", "hooks", "mechanism", "point", "tried")}
