"""Real Podman: `podman system service` in a namespace of the test's own (its own
storage, runroot and CNI network: tests/podman_host.py), two containers on one
bridge network. Names in topo equal `podman ps`'s, ping between them is
delivered, check is quiet, and everything is gone afterwards — containers,
their /run/netns/netns-UUID mounts, the service, conmon, mounts, directory."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from tests.conftest import vethtrace
from tests.podman_host import BRIDGE, PodmanHost, podman_host
from vethtrace.lab import dockerd

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def host() -> Iterator[PodmanHost]:
    before = _podman_mounts()
    with podman_host() as h:
        h.run("pa", "sleep", "100000")
        h.run("pb", "sleep", "100000")
        yield h
        root = h.root
    assert not os.path.exists(root)
    assert not dockerd.processes_naming(root), "service/conmon processes left behind"
    assert _podman_mounts() <= before, "Podman's netns mounts left behind"


def _podman_mounts() -> set[str]:
    """Podman's bind mounts of its containers' namespaces (other runs' come and go)."""
    return {n for n in os.listdir("/run/netns") if n.startswith("netns-")}


def test_topo_names_are_podman_ps_names(host: PodmanHost) -> None:
    names = set(host.podman("ps", "--format", "{{.Names}}").split())
    assert names == {"pa", "pb"}
    topo = json.loads(vethtrace("topo", "--json", env=host.env, check=True).stdout)
    labels = {ns["name"] for ns in topo["namespaces"] if ns.get("container")}
    assert {f"podman:{n}" for n in names} <= labels
    daemon = next(ns for ns in topo["namespaces"] if ns["name"] == host.netns)
    (net,) = [n for n in daemon["runtime_networks"] if n["bridge"] == BRIDGE]
    assert set(net["containers"]) == names


def test_ping_between_podman_containers_delivered(host: PodmanHost) -> None:
    ip = host.podman("inspect", "-f", "{{.NetworkSettings.Networks.vtpod.IPAddress}}", "pb")
    res = vethtrace("ping", "--from", "podman:pa", "podman:pb", ip, "--json", env=host.env)
    assert res.returncode == 0, res.stderr
    v = json.loads(res.stdout)
    assert v["verdict"] == "delivered", v["summary"]
    assert "podman:pa" in v["summary"] and "podman:pb" in v["summary"]


def test_check_quiet_on_podman_host(host: PodmanHost) -> None:
    res = vethtrace("check", "--json", "-n", host.netns, env=host.env)
    findings = json.loads(res.stdout)["findings"]
    assert res.returncode == 0, findings
    assert not any("bridge-nf-call" in cmd for f in findings for cmd in f["fix"])
