"""Shared fixtures. Privileged tests build their own namespaces with a unique
prefix (never the root namespace's interfaces) and always remove them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="privileged test: needs root")
    for item in items:
        if "privileged" in item.keywords:
            item.add_marker(skip)


SESSION = f"vtt{uuid.uuid4().hex[:4]}"  # every namespace this test run makes starts so
_counter = iter(range(1, 1_000_000))


def new_prefix() -> str:
    """A namespace-name prefix unique to this run and call, e.g. 'vtt3f2a7-'."""
    return f"{SESSION}{next(_counter)}-"


@pytest.fixture
def prefix() -> str:
    return new_prefix()


def vethtrace(
    *args: str, check: bool = False, timeout: float = 120, **kw
) -> subprocess.CompletedProcess:
    """Run the installed console script the way a user does; text output."""
    return subprocess.run(
        [str(VENV_BIN / "vethtrace"), *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
        **kw,
    )


def as_nobody() -> list[str]:
    """Command prefix that runs a program as nobody, keeping one capability:
    CAP_DAC_READ_SEARCH. Not root, so it cannot trace or change the network; but
    it can still read the checkout, whose parent may be 0700 (a clone in a
    `mktemp -d` directory or under /root). Empty when we are not root anyway."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv not installed")
    keep = "-all,+dac_read_search"
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
            f"--inh-caps={keep}", f"--ambient-caps={keep}"]  # fmt: skip


@pytest.fixture
def cli():
    return vethtrace


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_namespaces() -> Iterator[None]:
    """Fail loudly at the end if this run left one of its namespaces behind
    (other runs on the machine use other SESSION tokens and are left alone)."""
    yield
    leftovers = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    leftovers = [n for n in leftovers if n.startswith(SESSION)]
    for name in leftovers:  # clean up anyway, then report
        subprocess.run(["ip", "netns", "del", name], check=False)
    assert not leftovers, f"tests left namespaces behind: {leftovers}"
