"""The `[docker]` lab step: a Docker daemon of the lab's own, its networks and its
containers, all made through the real `docker` CLI.

Why a daemon per lab: the lab's namespaces, bridges and Docker's iptables rules
then live in a lab namespace and vanish with it, the machine's own Docker (if
any) is never asked or changed, and `down` can remove everything by stopping
one daemon (vethtrace/lab/dockerd.py says how it is started and stopped).

Recovery. The daemon's namespace and directory are recorded in the lab's state
BEFORE dockerd starts, so `down` — also after an `up` that was killed half-way
— stops it, its containerd and shims, unmounts and removes its directory, and
only then are the namespaces removed (a daemon would keep its namespace alive).

The daemon's API socket is `<root>/docker.sock`; `lab up` prints it, and
`vethtrace --docker-host unix://<root>/docker.sock` (or DOCKER_HOST) makes
`docker:NAME` mean the lab's containers.
"""

from __future__ import annotations

import hashlib
import os

from vethtrace.lab import dockerd, state
from vethtrace.lab.scenario import DockerContainer, DockerSetup

#: Where lab daemons keep images, containers and their sockets (on disk: overlayfs
#: and image layers do not belong on /run's small tmpfs).
DATA_DIR = os.environ.get("VETHTRACE_LAB_DOCKER", "/var/lib/vethtrace/labs")
# containerd's socket lands at <root>/exec/containerd/containerd.sock: keep well
# under the 108 bytes a unix socket path may have
MAX_ROOT = 64


def root_of(st: state.LabState) -> str:
    """The lab's daemon directory (a hash of the lab's name when that would be long)."""
    root = os.path.join(DATA_DIR, f"{st.prefix}{st.name}")
    if len(root) > MAX_ROOT:
        root = os.path.join(DATA_DIR, hashlib.sha1(root.encode()).hexdigest()[:16])
    return root


def daemon_of(st: state.LabState) -> dockerd.Daemon | None:
    """The daemon a lab recorded, running or not."""
    if not st.docker:
        return None
    return dockerd.Daemon(str(st.docker["netns"]), str(st.docker["root"]))


def host_of(st: state.LabState) -> str | None:
    """DOCKER_HOST for the lab's daemon, or None when the lab has none."""
    d = daemon_of(st)
    return d.host if d is not None else None


def start(setup: DockerSetup, real: dict[str, str], st: state.LabState) -> None:
    """Start the lab's daemon (recorded first), import the image, create the networks,
    run the containers; UserError (one line from docker) when something refuses."""
    d = dockerd.Daemon(real[setup.netns], root_of(st))
    st.docker = {"netns": d.netns, "root": d.root}
    st.save()
    if not d.running():
        d = dockerd.start(d.netns, d.root)
    image = dockerd.ensure_image(d)
    for net in setup.networks:
        args = ["network", "create", "--driver", "bridge", "--subnet", net.subnet,
                "-o", f"com.docker.network.bridge.name={net.bridge}"]  # fmt: skip
        if net.internal:
            args.append("--internal")
        if not net.icc:
            args += ["-o", "com.docker.network.bridge.enable_icc=false"]
        d.docker(*args, net.name)
    for box in setup.containers:
        _run(d, box, image)
    for box in setup.containers:
        if not box.running:  # after every container ran: its address stays reserved
            d.docker("stop", "-t", "0", box.name)


def _run(d: dockerd.Daemon, box: DockerContainer, image: str) -> None:
    (first, ip), *others = box.networks.items()
    args = ["run", "-d", "--name", box.name, "--hostname", box.name,
            "--network", first, "--ip", ip]  # fmt: skip
    for p in box.publish:
        args += ["-p", p]
    d.docker(*args, image, *box.command)
    for net, addr in others:
        d.docker("network", "connect", "--ip", addr, net, box.name)


def netns_path(st: state.LabState, box: str) -> str:
    """/proc/PID/ns/net of the lab's running container `box` (asked of its daemon)."""
    d = daemon_of(st)
    if d is None:
        raise KeyError(f"lab {st.name} has no Docker daemon")
    pid = d.docker("inspect", "-f", "{{.State.Pid}}", box)
    if not pid.isdigit() or pid == "0":
        raise KeyError(f"container {box} of lab {st.name} is not running")
    return f"/proc/{pid}/ns/net"


def teardown(st: state.LabState) -> list[str]:
    """Stop the lab's daemon and remove its containers, networks, directory, mounts
    and processes; notes for what could not be removed."""
    d = daemon_of(st)
    if d is None:
        return []
    dockerd.stop(d)
    notes = []
    if os.path.exists(d.root):
        notes.append(f"docker: could not remove {d.root}")
    left = dockerd.processes_naming(d.root)
    if left:
        notes.append(f"docker: processes still running for {d.root}: {left}")
    return notes
