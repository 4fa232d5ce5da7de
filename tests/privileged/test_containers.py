"""Real containers: a Docker daemon of the test's own (in its own namespace), a
user-defined network with two containers, a network with ICC off, an internal
one, a container on two networks, one stopped. Names in topo/check/ping/trace
must be `docker ps`'s; ping delivers on the healthy network and blames the
right bridge on the ICC-off one without advising to switch Docker's isolation
off; check gives no false alarm; pcapng names the containers (read back by
tshark); bad input is one line and exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import vethtrace
from tests.docker_host import docker_host, leftover_processes
from vethtrace.lab import dockerd

pytestmark = pytest.mark.privileged


class Host:
    def __init__(self, d: dockerd.Daemon, tag: str) -> None:
        self.d, self.tag = d, tag

    def n(self, short: str) -> str:
        return f"{self.tag}{short}"

    def ip(self, container: str, network: str) -> str:
        fmt = f'{{{{(index .NetworkSettings.Networks "{self.n(network)}").IPAddress}}}}'
        return self.d.docker("inspect", "-f", fmt, self.n(container))

    def cli(self, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        return vethtrace(*args, env=self.d.env, **kw)


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    with docker_host() as d:
        h = Host(d, d.netns.split("-")[0] + "-")
        run = ("run", "-d", "--network")
        d.docker("network", "create", h.n("net"))
        d.docker("network", "create", "-o", "com.docker.network.bridge.enable_icc=false",
                 h.n("icc"))  # fmt: skip
        d.docker("network", "create", "--internal", h.n("int"))
        for name, net in (("web", "net"), ("db", "net"), ("a1", "icc"), ("a2", "icc"),
                          ("i1", "int"), ("gone", "net")):  # fmt: skip
            d.docker(*run, h.n(net), "--name", h.n(name), dockerd.IMAGE, "sleep", "3600")
        d.docker("network", "connect", h.n("int"), h.n("web"))  # web: on two networks
        d.docker("stop", "-t", "0", h.n("gone"))
        yield h
        root = d.root
    assert not os.path.exists(root)
    assert not leftover_processes(d), "dockerd/containerd/shim processes left behind"


def _ps_names(h: Host) -> set[str]:
    return set(h.d.docker("ps", "--format", "{{.Names}}").split())


def test_topo_names_are_docker_ps_names(host: Host) -> None:
    res = host.cli("topo", "--json", check=True)
    topo = json.loads(res.stdout)
    labels = {ns["name"] for ns in topo["namespaces"] if ns.get("container")}
    assert {f"docker:{n}" for n in _ps_names(host)} <= labels
    daemon = next(ns for ns in topo["namespaces"] if ns["name"] == host.d.netns)
    nets = {n["name"]: n for n in daemon["runtime_networks"]}
    assert nets[host.n("icc")]["icc"] is False
    assert nets[host.n("int")]["internal"] is True
    assert set(nets[host.n("net")]["containers"]) == {host.n("web"), host.n("db")}
    # a container named by (a prefix of) its id resolves to the same namespace
    cid = host.d.docker("inspect", "-f", "{{.Id}}", host.n("web"))[:12]
    tree = host.cli("topo", "-n", f"docker:{cid}", check=True).stdout
    assert f"docker:{host.n('web')}" in tree


def test_ping_between_containers_delivered_and_pcap_names_them(host: Host, tmp_path) -> None:
    pcap = tmp_path / "run.pcapng"
    web, db = f"docker:{host.n('web')}", f"docker:{host.n('db')}"
    res = host.cli("ping", "--from", web, db, host.ip("db", "net"), "-c", "1", "--json",
                   "--pcap", str(pcap))  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["verdict"] == "delivered"
    text = json.dumps(out)
    assert web in text and db in text and "/proc/" not in text
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    fields = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-e", "frame.interface_name",
         "-e", "frame.interface_description", "-e", "frame.comment"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    rows = [line.split("\t") for line in fields]
    in_web = [r for r in rows if r[0] == f"{web}/eth0"]
    assert in_web, rows
    assert all(f"netns {web}" in r[1] and f"container {web}" in r[1] for r in in_web)
    assert all(r[2] == f"container {web} (netns {web})" for r in in_web)
    bridge_side = [r for r in rows if r[0].startswith(f"{host.d.netns}/")]
    assert bridge_side and all(len(r) < 3 or not r[2] for r in bridge_side)


def test_ping_icc_off_blames_the_bridge_never_the_isolation(host: Host) -> None:
    res = host.cli("ping", "--from", f"docker:{host.n('a1')}", f"docker:{host.n('a2')}",
                   host.ip("a2", "icc"), "-c", "1", "--json")  # fmt: skip
    assert res.returncode == 1, res.stderr
    v = json.loads(res.stdout)
    bridge = "br-" + host.d.docker("network", "inspect", "-f", "{{.Id}}", host.n("icc"))[:12]
    assert v["verdict"] == "dropped"
    assert v["culprit"] == {"netns": host.d.netns, "interface": bridge}
    assert "enable_icc=false" in v["summary"]
    assert not any("bridge-nf-call" in f for f in v["fix"])


def test_check_healthy_docker_host_no_false_alarm(host: Host) -> None:
    res = host.cli("check", "--json", "-n", host.d.netns)
    findings = json.loads(res.stdout)["findings"]
    assert res.returncode == 0, findings
    assert not any("bridge-nf-call" in cmd for f in findings for cmd in f["fix"])
    rules = {(f["rule"], f["interface"]) for f in findings}
    icc_bridge = "br-" + host.d.docker("network", "inspect", "-f", "{{.Id}}", host.n("icc"))[:12]
    assert ("container-icc-disabled", icc_bridge) in rules
    assert any(r == "container-network-internal" for r, _ in rules)
    assert {f["severity"] for f in findings} <= {"info"}


def test_trace_names_containers(host: Host) -> None:
    web = f"docker:{host.n('web')}"
    target = host.ip("db", "net")

    def pinger() -> None:
        time.sleep(4)
        host.d.docker("exec", host.n("web"), "ping", "-c", "3", "-i", "0.3", target, check=False)

    t = threading.Thread(target=pinger)
    t.start()
    res = host.cli("trace", "icmp", "-n", web, "--duration", "7", "--json", timeout=120)
    t.join()
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert events, res.stderr
    assert {e["netns_name"] for e in events} == {web}


@pytest.mark.parametrize("what", ["unknown", "stopped", "no-daemon"])
def test_bad_container_names(host: Host, what: str) -> None:
    env = host.d.env
    name = {"unknown": "docker:no-such-container", "stopped": f"docker:{host.n('gone')}",
            "no-daemon": f"docker:{host.n('web')}"}[what]  # fmt: skip
    if what == "no-daemon":
        env = {**env, "DOCKER_HOST": f"unix://{host.d.root}/nothing-here.sock"}
    for args in (["topo", "-n", name], ["ping", "--from", name, "root", "10.9.9.9", "-c", "1"],
                 ["trace", "-n", name, "--duration", "1"]):  # fmt: skip
        res = vethtrace(*args, env=env)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
        expect = {"unknown": "no container named", "stopped": "is not running",
                  "no-daemon": "did not answer"}[what]  # fmt: skip
        assert expect in lines[0]
