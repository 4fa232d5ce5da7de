"""Output people pipe and grep: not wrapped unless COLUMNS asks, no trailing
spaces, and `report`'s notes on stderr (stdout is the report itself)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vethtrace.lab.scenario import load_path, scenario_paths

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "recordings"


def run(
    *args: str, columns: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if columns is not None:
        env["COLUMNS"] = columns
    return subprocess.run(
        [sys.executable, "-m", "vethtrace.cli", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=60,
    )  # fmt: skip


def no_trailing_spaces(text: str) -> None:
    bad = [line for line in text.splitlines() if line != line.rstrip()]
    assert not bad, f"lines with trailing spaces: {bad[:3]}"


def test_lab_list_in_a_pipe_keeps_each_scenario_on_one_line() -> None:
    res = run("lab", "list")
    assert res.returncode == 0, res.stderr
    no_trailing_spaces(res.stdout)
    lines = res.stdout.splitlines()
    for path in scenario_paths():
        scn = load_path(path)
        mine = [line for line in lines if line.split()[:1] == [scn.name]]
        assert len(mine) == 1 and " ".join(scn.summary.split()) in " ".join(mine[0].split())
    assert len(lines) == 1 + len(scenario_paths())  # the header, one line per scenario


def test_report_in_a_pipe_is_not_wrapped() -> None:
    res = run("report", "seed.vtrec", cwd=SAMPLES)
    assert res.returncode == 1, res.stderr
    no_trailing_spaces(res.stdout)
    verdict = json.loads((SAMPLES / "seed.expected.json").read_text())
    assert verdict["explanation"] in res.stdout.splitlines()  # one line, whole


def test_columns_still_sets_the_width() -> None:
    res = run("report", "seed.vtrec", columns="100", cwd=SAMPLES)
    no_trailing_spaces(res.stdout)
    # the banner (file, tool, kernel, command) is one line whatever the width
    body = [line for line in res.stdout.splitlines() if not line.startswith("recording ")]
    assert max(len(line) for line in body) <= 100
    res = run("lab", "show", "seed", columns="60")
    no_trailing_spaces(res.stdout)
    assert max(len(line) for line in res.stdout.splitlines()) <= 60


def test_report_notes_go_to_stderr(tmp_path: Path) -> None:
    cut = tmp_path / "cut.vtrec"
    lines = (SAMPLES / "seed.vtrec").read_text().splitlines(keepends=True)
    cut.write_text("".join(line for line in lines if '"type":"end"' not in line))
    res = run("report", str(cut))
    assert "no end record" in res.stderr
    assert "note:" not in res.stdout and "no end record" not in res.stdout
    res = run("report", str(cut), "--json")
    assert json.loads(res.stdout)["recording"]["complete"] is False
