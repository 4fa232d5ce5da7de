"""Container runtimes' answers -> vethtrace's names and network facts, on answers
recorded from the real daemons on our machines (samples/runtimes/: Docker 20.10's
and Podman 4.3's APIs, a network with ICC off and a published port), and
containerd task bundles built in a temporary directory with the CRI
annotations containerd's CRI plugin writes (no kubelet runs here to record one)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vethtrace.diagnose.check import run_rules
from vethtrace.errors import UserError
from vethtrace.model import (
    IfaceKey,
    Interface,
    Namespace,
    PublishedPort,
    RuntimeNetwork,
    Topology,
)
from vethtrace.topology.runtimes import container_id, cri, listeners, split
from vethtrace.topology.runtimes import docker as api

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "runtimes"


def load(name: str):
    return json.loads((SAMPLES / f"{name}.json").read_text())


@pytest.mark.parametrize("runtime", ["docker", "podman"])
def test_running_containers_by_id(runtime: str) -> None:
    listing = api.parse_list(load(f"{runtime}-containers"))
    name = "web" if runtime == "docker" else "pweb"
    full = load(f"{runtime}-inspect-{name}")["Id"]
    assert listing[full] == name


@pytest.mark.parametrize("runtime", ["docker", "podman"])
def test_inspect_gives_pid_and_state(runtime: str) -> None:
    name = "web" if runtime == "docker" else "pweb"
    c = api.parse_inspect(runtime, load(f"{runtime}-inspect-{name}"))
    assert (c.name, c.running, c.status) == (name, True, "running")
    assert c.pid and c.pid > 1


def test_stopped_container_has_no_pid() -> None:
    doc = load("docker-inspect-web")
    doc["State"] = {**doc["State"], "Running": False, "Status": "exited", "Pid": 0}
    c = api.parse_inspect("docker", doc)
    assert (c.running, c.status, c.pid) == (False, "exited", None)


def test_docker_network_icc_off_members_and_bridge() -> None:
    net = api.parse_network("docker", load("docker-network-shop"))
    assert (net.name, net.driver, net.icc, net.internal) == ("shop", "bridge", False, False)
    assert net.bridge == f"br-{net.id[:12]}"  # Docker's name for user-defined bridges
    assert set(net.containers) == {"web", "db"}
    assert all("/" in a for a in net.containers.values())
    assert net.subnets and all("/" in s for s in net.subnets)


def test_docker_default_bridge_named_by_option() -> None:
    docs = {d["Name"]: d for d in load("docker-networks")}
    net = api.parse_network("docker", docs["bridge"])
    assert net.bridge == "docker0" and net.icc


def test_published_port_listed_under_its_network() -> None:
    shop = load("docker-network-shop")["Id"]
    ports = api.parse_ports(load("docker-containers"))[shop]
    # Docker lists a port once per address family it binds (0.0.0.0 and ::)
    assert {(p.proto, p.host_port, p.container, p.container_port) for p in ports} == {
        ("tcp", 8080, "web", 80)
    }


def test_podman_network_bridge_from_libpod_answer() -> None:
    net = api.parse_network("podman", load("podman-network"))
    assert net.bridge is None  # the compatible answer does not say
    bridges = api.parse_libpod_networks(load("podman-libpod-networks"))
    assert bridges[net.id] == "cni-podman0"
    assert net.containers == {"pweb": "10.88.0.5/16"}


@pytest.mark.parametrize(
    "cgroup, expected",
    [
        ("0::/docker/" + "a" * 64, ("docker", "a" * 64)),
        ("9:name=systemd:/libpod_parent/libpod-" + "b" * 64, ("podman", "b" * 64)),
        ("0::/system.slice/cri-containerd-" + "c" * 64 + ".scope", ("containerd", "c" * 64)),
        ("0::/user.slice", None),
    ],
)
def test_cgroup_names_the_runtime(cgroup: str, expected) -> None:
    assert container_id(cgroup) == expected


def test_names_users_type() -> None:
    assert split("docker:web") == ("docker", "web")
    assert split("pod:default/nginx") == ("pod", "default/nginx")
    assert split("vt-host") is None and split("lxc:x") is None and split("docker:") is None


def _bundle(state: Path, ns: str, ident: str, annotations: dict, pid: int | None) -> None:
    d = state / cri.TASKS / ns / ident
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "annotations": annotations}))
    if pid is not None:
        (d / "init.pid").write_text(str(pid))


def test_cri_pod_and_container_from_task_bundles(tmp_path: Path, monkeypatch) -> None:
    sandbox = {cri.CONTAINER_TYPE: "sandbox", cri.SANDBOX_NAME: "nginx-7d9",
               cri.SANDBOX_NS: "default", "io.kubernetes.cri.sandbox-id": "1" * 64}  # fmt: skip
    app = {**sandbox, cri.CONTAINER_TYPE: "container", cri.CONTAINER_NAME: "nginx"}
    _bundle(tmp_path, "k8s.io", "1" * 64, sandbox, os.getpid())
    _bundle(tmp_path, "k8s.io", "2" * 64, app, os.getpid())
    _bundle(tmp_path, "default", "3" * 64, {}, None)  # ctr run: no CRI metadata, no pid yet
    monkeypatch.setenv("CONTAINERD_STATE", str(tmp_path))
    tasks = cri.tasks()
    assert [t.label for t in tasks] == ["containerd:333333333333", "pod:default/nginx-7d9",
                                        "pod:default/nginx-7d9"]  # fmt: skip
    assert cri.find(tasks, "default/nginx-7d9", pod=True).id == "1" * 64
    assert cri.find(tasks, "nginx", pod=False).id == "2" * 64
    assert cri.find(tasks, "default/other", pod=True) is None
    from vethtrace.topology.runtimes import netns_path

    assert netns_path("pod:default/nginx-7d9") == f"/proc/{os.getpid()}/ns/net"
    with pytest.raises(UserError, match="no running pod 'default/other'"):
        netns_path("pod:default/other")


def test_unreachable_runtime_is_one_line(monkeypatch, tmp_path: Path) -> None:
    from vethtrace.topology.runtimes import netns_path

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    with pytest.raises(UserError) as err:
        netns_path("docker:web")
    assert "did not answer" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="no such process"):
        netns_path("pid:999999999")


# --- published ports: stopped containers and listeners ------------------------------


def test_stopped_container_port_from_its_bindings() -> None:
    """Docker lists no ports for a stopped container (its DNAT is gone): the bindings
    it was started with come from its inspect answer (recorded: docker-port-stopped)."""
    every = load("docker-containers-all")
    stopped = load("docker-inspect-stopped")
    ports = api.parse_ports(every, {stopped["Id"]: stopped})
    flat = {(p.container, p.host_port, p.container_port, p.running, p.status, p.container_ip)
            for ps in ports.values() for p in ps}  # fmt: skip
    assert flat == {("web", 8080, 80, False, "exited", ""),
                    ("api", 8081, 80, True, "running", "172.30.6.3")}  # fmt: skip
    # without the inspect answer a stopped container's bindings are unknown, not invented
    assert all(p.container == "api" for ps in api.parse_ports(every).values() for p in ps)


def test_listeners_from_socket_tables() -> None:
    tcp = (SAMPLES / "proc-net-tcp-api.txt").read_text()
    tcp6 = (SAMPLES / "proc-net-tcp6-api.txt").read_text()
    socks = listeners.parse(tcp, "tcp") | listeners.parse(tcp6, "tcp")
    assert ("::", 80) in socks  # busybox httpd on every address
    assert ("127.0.0.11", 36491) in socks  # Docker's embedded DNS, loopback only
    assert listeners.answers(socks, 80, "172.30.6.3")
    assert not listeners.answers(socks, 8080, "172.30.6.3")
    assert not listeners.answers(socks, 36491, "172.30.6.3"), "127.0.0.11 takes no DNAT"
    assert listeners.answers({("172.30.6.3", 53)}, 53, "172.30.6.3")
    assert listeners.answers({("::ffff:172.30.6.3", 53)}, 53, "172.30.6.3")
    assert listeners.parse(tcp, "udp") == set()  # state 0A is TCP's LISTEN only


def _daemon_ns(*ports: PublishedPort) -> Topology:
    br = Interface(IfaceKey(7, 3), "shop0", "bridge", True, "UP", True, 1500)
    net = RuntimeNetwork("docker", "shop", "abc", "bridge", bridge="shop0",
                         subnets=["172.30.6.0/24"], published=list(ports),
                         api="unix:///srv/d/docker.sock")  # fmt: skip
    ns = Namespace(7, "vt-host", interfaces=[br], runtime_networks=[net])
    return Topology(namespaces=[ns])


def test_port_rules() -> None:
    ok = PublishedPort("tcp", "0.0.0.0", 8081, "api", 80, container_ip="172.30.6.3",
                       listening=True)  # fmt: skip
    stopped = PublishedPort("tcp", "0.0.0.0", 8080, "web", 80, running=False, status="exited")
    deaf = PublishedPort("udp", "0.0.0.0", 5353, "dns", 53, container_ip="172.30.6.4",
                         listening=False)  # fmt: skip
    unknown = PublishedPort("tcp", "0.0.0.0", 9000, "x", 90, container_ip="172.30.6.5")
    findings = run_rules(_daemon_ns(ok, stopped, deaf, unknown))
    got = {(f.rule, f.interface, f.severity) for f in findings}
    assert got == {("container-port-stopped", "shop0", "warning"),
                   ("container-port-no-listener", "shop0", "warning")}  # fmt: skip
    by = {f.rule: f for f in findings}
    assert by["container-port-stopped"].fix == ["docker -H unix:///srv/d/docker.sock start web"]
    assert "5353/udp" in by["container-port-no-listener"].summary
    assert run_rules(_daemon_ns(ok, unknown)) == []  # healthy, or not known: quiet
