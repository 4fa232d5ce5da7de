"""Labs built with a real Docker daemon of their own (the `[docker]` step): every
docker lab is built, its stated pings and connections are checked with the
system's ping and bash (from inside the containers' namespaces, by nsenter),
`vethtrace ping --from docker:A docker:B IP` gives the stated verdict and
culprit, `check` fires the stated rules on the stated culprit and is quiet on
the healthy ones, and pasting a fix works. `down` stops the daemon and leaves
no container, process, mount, directory or namespace behind — also after an
`up` that was killed half-way."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, vethtrace
from tests.labs import built_lab, check_pings, check_tcp, connect
from vethtrace.lab import BuiltLab, docker, dockerd, load, scenarios, state

pytestmark = pytest.mark.privileged

DOCKER_LABS = [n for n in scenarios() if load(n).docker]


@pytest.fixture(autouse=True)
def _need_docker() -> None:
    if subprocess.run(["which", "dockerd", "busybox"], capture_output=True).returncode:
        pytest.skip("docker.io / busybox-static not installed (./run setup)")


def cli(lab: BuiltLab, *args: str) -> subprocess.CompletedProcess:
    return vethtrace(*args, env=lab.env, timeout=120)


def findings(lab: BuiltLab) -> tuple[int, list[dict]]:
    r = cli(lab, "check", "--json", "-n", lab.ns(lab.scenario.docker.netns))  # type: ignore[union-attr]
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)["findings"]


def leftovers(root: str) -> list[str]:
    """Whatever of a lab daemon is still there: directory, processes, mounts."""
    out = [root] if os.path.exists(root) else []
    out += [f"pid {p}" for p in dockerd.processes_naming(root)]
    with open("/proc/self/mounts") as f:
        out += [line.split()[1] for line in f if root in line.split()[1]]
    return out


def ours(prefix: str) -> list[str]:
    return [n for n in os.listdir("/run/netns") if n.startswith(prefix)]


@pytest.mark.parametrize("name", DOCKER_LABS)
def test_docker_lab(name: str, prefix: str) -> None:
    scn = load(name)
    root_links = set(os.listdir("/sys/class/net"))
    with built_lab(name, prefix) as lab:
        st = state.find(name, prefix)
        assert st is not None and st.complete and lab.docker_host
        root = st.docker["root"]
        d = docker.daemon_of(st)
        assert d is not None and d.running()
        # the containers are the scenario's, running or stopped as it says
        ps = d.docker("ps", "-a", "--format", "{{.Names}} {{.State}}").splitlines()
        assert sorted(ps) == sorted(
            f"{c.name} {'running' if c.running else 'exited'}" for c in scn.docker.containers  # type: ignore[union-attr]
        )
        wrong = [(p.source, p.to, p.ok) for p, ok in check_pings(lab) if ok != p.ok]
        assert not wrong, f"pings not as stated (from, to, expected): {wrong}"
        wrong = [(t.source, t.to, t.port, t.ok) for t, ok in check_tcp(lab) if ok != t.ok]
        assert not wrong, f"tcp not as stated (from, to, port, expected): {wrong}"

        # vethtrace ping, the way a user types it (docker:NAME through the lab's daemon)
        exp = scn.expect
        main = next((p for p in exp.pings if not p.ok), exp.pings[0])
        r = cli(lab, "ping", "--from", lab.ns(main.source), lab.ns(main.netns), main.to, "--json")
        v = json.loads(r.stdout)
        assert r.returncode == (0 if main.ok else 1), (r.stderr, v["summary"])
        if main.ok:
            assert v["verdict"] == "delivered", v["summary"]
        if exp.verdict:
            assert v["verdict"] == exp.verdict, v["summary"]
        if exp.verdict and exp.culprit:
            assert v["culprit"] == {"netns": lab.ns(exp.culprit.netns),
                                    "interface": exp.culprit.interface}, v["summary"]  # fmt: skip
            assert not any("bridge-nf-call" in f for f in v["fix"]), v["fix"]
        # check: the stated rules on the stated culprit, nothing loud on healthy labs
        rc, found = findings(lab)
        loud = [f for f in found if f["severity"] != "info"]
        hits = [f for f in found if f["rule"] in exp.rules]
        if exp.rules:
            assert exp.culprit is not None
            where = (lab.ns(exp.culprit.netns), exp.culprit.interface)
            assert where in {(f["netns"], f["interface"]) for f in hits}, found
        assert not [f for f in loud if f not in hits], f"false alarm: {loud}"
        assert rc == (1 if loud else 0), found
        assert not any("bridge-nf-call" in cmd for f in found for cmd in f["fix"])
        # pasting a warning's fix (exactly as printed) makes it go and the lab work
        for f in loud:
            for cmd in f["fix"]:
                res = subprocess.run(shlex.split(cmd), capture_output=True, text=True, timeout=60)
                assert res.returncode == 0, (cmd, res.stderr)
        if loud:
            _, after = findings(lab)
            assert not [f for f in after if f["severity"] != "info"], after
            assert all(connect(lab.path(t.source), t.to, t.port) for t in exp.tcp), exp.tcp
    assert leftovers(root) == [], "the lab's dockerd left something behind"
    assert ours(prefix) == [] and state.find(name, prefix) is None
    assert set(os.listdir("/sys/class/net")) == root_links, "root namespace untouched"


def test_isolation_between_networks_named(prefix: str) -> None:
    """A container on one network pinging one on another: dropped by Docker's
    isolation rules where it is routed, said in words, with no fix undoing it."""
    with built_lab("docker-two-networks", prefix) as lab:
        r = cli(lab, "ping", "--from", "docker:proxy", "docker:store", "172.30.5.3", "--json")
        v = json.loads(r.stdout)
        assert r.returncode == 1 and v["verdict"] == "dropped", v["summary"]
        assert v["culprit"] == {"netns": lab.ns("host"), "interface": "front0"}
        assert "networks front and back are isolated" in v["summary"]
        assert not any("bridge-nf-call" in f or "DOCKER-USER" in f for f in v["fix"]), v["fix"]


NO_LISTENER = textwrap.dedent('''
    name = "docker-deaf"
    summary = "published ports with nothing (or only 127.0.0.1) listening behind them"
    [[netns]]
    name = "host"
    [docker]
    netns = "host"
    [[docker.network]]
    name = "shop"
    bridge = "shop0"
    subnet = "172.30.7.0/24"
    [[docker.container]]
    name = "deaf"
    networks = { shop = "172.30.7.2" }
    publish = ["8080:80"]
    [[docker.container]]
    name = "local"
    networks = { shop = "172.30.7.3" }
    command = ["httpd", "-f", "-p", "127.0.0.1:80", "-h", "/www"]
    publish = ["8081:80"]
    [[docker.container]]
    name = "api"
    networks = { shop = "172.30.7.4" }
    command = ["httpd", "-f", "-p", "80", "-h", "/www"]
    publish = ["8082:80", "5353:53/udp"]
    [[expect.ping]]
    from = "host"
    netns = "docker:api"
    to = "172.30.7.4"
    ok = true
''')


def test_published_port_without_listener(prefix: str, tmp_path: Path) -> None:
    path = tmp_path / "docker-deaf.toml"
    path.write_text(NO_LISTENER)
    with built_lab(str(path), prefix) as lab:
        rc, found = findings(lab)
        deaf = {(f["interface"], f["summary"].split(" ")[0]) for f in found
                if f["rule"] == "container-port-no-listener"}  # fmt: skip
        # sleep listens nowhere, httpd on 127.0.0.1 takes no DNAT'd connection;
        # httpd on every address answers 8082 (and 5353/udp has no socket: flagged)
        assert deaf == {("shop0", "host:8080/tcp"), ("shop0", "host:8081/tcp"),
                        ("shop0", "host:5353/udp")}, found  # fmt: skip
        assert rc == 1


CRASH = textwrap.dedent("""
    import os, sys
    from vethtrace.lab import docker, up
    real = docker._run
    def crash(d, box, image):
        if box.name == "db":
            os._exit(9)      # like SIGKILL with the daemon up and one container running
        return real(d, box, image)
    docker._run = crash
    up(sys.argv[1], sys.argv[2])
""")


def test_crashed_up_and_dead_daemon_recovered(prefix: str) -> None:
    name = "docker-net"
    env = {**os.environ, "VETHTRACE_LAB_PREFIX": prefix}
    res = subprocess.run([sys.executable, "-c", CRASH, name, prefix], cwd=REPO,
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 9, res.stderr
    st = state.find(name, prefix)
    assert st is not None and not st.complete and st.docker, "recorded before it started"
    d = docker.daemon_of(st)
    assert d is not None and d.running()
    root = d.root
    down = vethtrace("lab", "down", name, env=env)
    assert down.returncode == 0 and "note:" not in down.stdout, (down.stdout, down.stderr)
    assert leftovers(root) == [] and ours(prefix) == []

    # a complete lab whose daemon died is rebuilt by `up`, not reported as up
    with built_lab(name, prefix):
        st = state.find(name, prefix)
        assert st is not None
        d = docker.daemon_of(st)
        assert d is not None and d.pid() is not None
        dockerd.stop(d)
        again = vethtrace("lab", "up", name, env=env)
        assert again.returncode == 0 and "built lab" in again.stdout, again.stdout
        assert d.running() and "web" in d.docker("ps", "--format", "{{.Names}}")
        assert "DOCKER_HOST=unix://" in again.stdout
    assert leftovers(root) == []
