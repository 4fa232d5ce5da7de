"""A real Docker host for tests: a namespace of the run's own with dockerd in it
(vethtrace.lab.dockerd), the busybox image, and a helper to run the docker CLI
against it. Everything is removed afterwards, daemon processes included.

    from tests.docker_host import docker_host
    def test_x(): with docker_host() as host: host.docker("run", ...)
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import new_prefix
from vethtrace.lab import dockerd

TEST_ROOT = "/var/lib/vethtrace-test"


@contextmanager
def docker_host() -> Iterator[dockerd.Daemon]:
    if shutil.which("dockerd") is None or shutil.which("busybox") is None:
        pytest.skip("docker.io / busybox-static not installed (./run setup)")
    name = f"{new_prefix()}dockerd"
    subprocess.run(["ip", "netns", "add", name], check=True)
    d = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        d = dockerd.start(name, f"{TEST_ROOT}/{name}")
        dockerd.ensure_image(d)
        yield d
    finally:
        if d is not None:
            dockerd.stop(d)
        subprocess.run(["ip", "netns", "del", name], check=False)


def leftover_processes(d: dockerd.Daemon) -> list[int]:
    return dockerd.processes_naming(d.root)
