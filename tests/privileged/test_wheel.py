"""vethtrace as an installed package, away from the checkout.

The wheel is built from a copy of the package sources (pyproject.toml,
README.md, vethtrace/: an in-tree build/ directory could smuggle stale files
into it), installed with its pinned dependencies from PyPI into a throwaway
venv made like the README's (the distribution's python3 with system site
packages, for bcc), and run from a directory outside the checkout with no
VETHTRACE_* overrides: doctor, lab list, lab up seed (this test's own prefix),
ping, lab down. The probes compile from the copies inside the wheel (an empty
probe cache of its own forces a compile) and the scenarios load from there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, new_prefix
from vethtrace.lab import load
from vethtrace.netns import exists

pytestmark = pytest.mark.privileged

SYSTEM_PYTHON = "/usr/bin/python3"


def run(*cmd: str | Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ directory of a fresh venv holding the wheel; the wheel's own files only."""
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"{SYSTEM_PYTHON} missing")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "vethtrace", src / "vethtrace",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
    dist = tmp / "dist"
    r = run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, src)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = dist.glob("vethtrace-*.whl")
    venv = tmp / "venv"
    r = run(SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", venv)
    assert r.returncode == 0, r.stderr
    r = run(venv / "bin" / "pip", "install", "-q", wheel, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return venv / "bin"


@pytest.fixture
def outside(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A working directory outside the checkout and an environment that cannot
    reach it: no PYTHONPATH, no VETHTRACE_* overrides, a probe cache of its own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VETHTRACE_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["VETHTRACE_CACHE"] = str(tmp_path / "cache")
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert not work.resolve().is_relative_to(REPO)
    return work, env


def test_installed_wheel_runs_doctor_lab_and_ping(installed: Path, outside) -> None:
    work, env = outside
    vt = installed / "vethtrace"

    r = run(installed / "python", "-c", "import vethtrace; print(vethtrace.__file__)",
            cwd=work, env=env)  # fmt: skip
    where = Path(r.stdout.strip())
    assert where.is_relative_to(installed.parent), f"imported from {where}, not the venv"

    r = run(vt, "doctor", "--json", cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    doctor = json.loads(r.stdout)
    assert doctor["tracing_possible"] is True
    assert doctor["checks"]["bcc"]["ok"] is True, doctor["checks"]["bcc"]

    r = run(vt, "lab", "list", cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    listed = {line.split()[0] for line in r.stdout.splitlines() if line.strip()}
    assert {"seed", "seed-fixed", "bridge-two"} <= listed, r.stdout

    prefix = new_prefix()
    lab_env = {**env, "VETHTRACE_LAB_PREFIX": prefix}
    seed = load("seed")  # the checkout's copy: what the wheel's copy must match
    failing = next(p for p in seed.expect.pings if not p.ok)
    try:
        r = run(vt, "lab", "up", "seed", cwd=work, env=lab_env)
        assert r.returncode == 0, r.stderr
        assert all(exists(prefix + ns.name) for ns in seed.netns)
        r = run(vt, "ping", "--from", prefix + failing.source, prefix + failing.netns,
                failing.to, "--json", cwd=work, env=lab_env, timeout=120)  # fmt: skip
        assert r.returncode == 1, r.stderr
        obj = json.loads(r.stdout)
        assert obj["verdict"] == seed.expect.verdict
        assert seed.expect.culprit is not None
        assert obj["culprit"] == {"netns": prefix + seed.expect.culprit.netns,
                                  "interface": seed.expect.culprit.interface}  # fmt: skip
        assert not any("probes unavailable" in n for n in obj.get("notes", [])), obj["notes"]
        assert list((Path(env["VETHTRACE_CACHE"])).glob("probes-*.json")), "nothing compiled"
    finally:
        r = run(vt, "lab", "down", "seed", cwd=work, env=lab_env)
    assert r.returncode == 0, r.stderr
    assert not any(exists(prefix + ns.name) for ns in seed.netns)
