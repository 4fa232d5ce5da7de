"""A real Podman host for tests: `podman system service` inside a namespace of the
run's own, with its own storage, runroot, tmpdir and network configuration (a
CNI conflist whose host-local IPAM keeps its files under our directory), so
nothing of the machine's Podman state is read or changed. Everything is
removed afterwards: containers (and the /run/netns/netns-UUID mounts Podman
makes for them), the service, conmon, mounts, the directory, the namespace.

Measured here (Debian 12's Podman 4.3, CNI backend, runc): containers need
`--ulimit nofile=1024:1024 --ulimit nproc=1024:1024`, or runc fails with
"error setting rlimit type 7: operation not permitted".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tests.conftest import new_prefix
from vethtrace.lab import dockerd

TEST_ROOT = "/var/lib/vethtrace-test"
IMAGE = "vethtrace/busybox:1"
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
NETWORK, BRIDGE, SUBNET = "vtpod", "vtpod0", "10.89.7.0/24"


@dataclass
class PodmanHost:
    netns: str
    root: str
    pid: int

    @property
    def url(self) -> str:
        return f"unix://{self.root}/podman.sock"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINER_HOST": self.url}

    def podman(self, *args: str, check: bool = True, timeout: float = 90) -> str:
        res = subprocess.run(["podman", "--url", self.url, *args], capture_output=True,
                             text=True, timeout=timeout)  # fmt: skip
        if check and res.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])}: {res.stderr.strip()}")
        return res.stdout.strip()

    def run(self, name: str, *command: str) -> None:
        self.podman("run", "-d", *ULIMITS, "--name", name, "--network", NETWORK, IMAGE, *command)


def _conflist(root: str) -> dict:
    ipam = {"type": "host-local", "dataDir": f"{root}/cni",
            "ranges": [[{"subnet": SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}]}  # fmt: skip
    return {"cniVersion": "0.4.0", "name": NETWORK, "plugins": [
        {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "ipam": ipam},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "firewall"}, {"type": "tuning"}]}  # fmt: skip


@contextmanager
def podman_host() -> Iterator[PodmanHost]:
    if shutil.which("podman") is None or shutil.which("busybox") is None:
        pytest.skip("podman / busybox-static not installed (./run setup)")
    name = f"{new_prefix()}podman"
    root = f"{TEST_ROOT}/{name}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    host = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        os.makedirs(f"{root}/net.d")
        with open(f"{root}/net.d/{NETWORK}.conflist", "w") as f:
            json.dump(_conflist(root), f)
        flags = ["--root", f"{root}/storage", "--runroot", f"{root}/run", "--tmpdir",
                 f"{root}/tmp", "--network-config-dir", f"{root}/net.d",
                 "--cgroup-manager", "cgroupfs", "--events-backend", "file"]  # fmt: skip
        with open(f"{root}/log", "ab") as log:
            proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{name}", "podman", *flags, "system", "service",
                 "--time", "0", f"unix://{root}/podman.sock"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        host = PodmanHost(name, root, proc.pid)
        deadline = time.monotonic() + 30
        while host.podman("version", check=False, timeout=10) == "":
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"podman system service did not start: {_log(root)}")
            time.sleep(0.2)
        dockerd.import_busybox(["podman", "--url", host.url, "import", "-", IMAGE],
                               dict(os.environ), root)  # fmt: skip
        yield host
    finally:
        if host is not None:
            host.podman("rm", "-a", "-f", "-t", "0", check=False)
            dockerd.terminate(host.pid, 15.0)
        dockerd.remove_root(root)
        subprocess.run(["ip", "netns", "del", name], check=False)


def _log(root: str) -> str:
    try:
        with open(f"{root}/log", errors="replace") as f:
            return (f.read().strip().splitlines() or ["no log"])[-1]
    except OSError:
        return "no log"
