"""A Docker daemon of vethtrace's own, inside a network namespace of its own.

Labs and tests that need real containers start `dockerd` here rather than use
(or disturb) the machine's: docker0, Docker's iptables rules and every
container's veth then live in that namespace and vanish with it, and the
root namespace is never touched. Measured on our machines:

- `nsenter --net=/run/netns/NS dockerd ...` works; `ip netns exec` does not (it
  remounts /sys, which hides the cgroup hierarchy: "Devices cgroup isn't
  mounted").
- Data-root, exec-root, socket and pidfile all live under one directory of
  ours, so nothing collides with a system daemon or another lab's.
- There is no image registry: the image is `docker import`ed from a root
  filesystem holding the distribution's busybox-static (sleep, ping, nc, httpd).

stop() removes the containers first (their shims exit with them), stops dockerd
(which stops its containerd), then kills by pid whatever process still names
our directory on its command line (a shim left behind), unmounts what is still
mounted under it and removes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass

from vethtrace.errors import UserError

IMAGE = "vethtrace/busybox:1"
BUSYBOX_APPLETS = ("sh", "sleep", "ping", "nc", "ip", "cat", "httpd", "wget", "ls", "echo")
START_TIMEOUT_S = 30.0


def docker_cli() -> str:
    cli = shutil.which("docker")
    if cli is None:
        raise UserError("docker is not installed (./run setup installs docker.io)")
    return cli


@dataclass
class Daemon:
    netns: str  # a /run/netns name the daemon runs in
    root: str  # our directory: data, exec, docker.sock, docker.pid, log

    @property
    def host(self) -> str:
        return f"unix://{self.root}/docker.sock"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        """Run the docker CLI against this daemon; its stdout, or UserError."""
        res = subprocess.run(
            [docker_cli(), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and res.returncode != 0:
            err = res.stderr.strip().splitlines()
            raise UserError(f"docker {' '.join(args[:3])}: {err[-1] if err else 'failed'}")
        return res.stdout.strip()

    def pid(self) -> int | None:
        try:
            with open(f"{self.root}/docker.pid") as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        return pid is not None and os.path.exists(f"/proc/{pid}") and os.path.exists(
            f"{self.root}/docker.sock"
        )


def start(netns: str, root: str) -> Daemon:
    """Start dockerd in /run/netns/<netns> with everything under `root`; returns once
    its API answers (UserError after START_TIMEOUT_S, with the log's last line)."""
    if shutil.which("dockerd") is None:
        raise UserError("dockerd is not installed (./run setup installs docker.io)")
    d = Daemon(netns, root)
    os.makedirs(root, exist_ok=True)
    log = open(f"{root}/log", "ab")  # noqa: SIM115 (handed to the daemon)
    subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{netns}", "dockerd",
         "--data-root", f"{root}/data", "--exec-root", f"{root}/exec",
         "-H", d.host, "--pidfile", f"{root}/docker.pid"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if d.running() and subprocess.run(
            [docker_cli(), "version"], env=d.env, capture_output=True, timeout=10
        ).returncode == 0:
            return d
        time.sleep(0.2)
    stop(d)
    raise UserError(f"dockerd did not start in {START_TIMEOUT_S:.0f} s: {_last_line(root)}")


def _last_line(root: str) -> str:
    try:
        with open(f"{root}/log", errors="replace") as f:
            lines = f.read().strip().splitlines()
        return lines[-1] if lines else "no log"
    except OSError:
        return "no log"


def ensure_image(d: Daemon, image: str = IMAGE) -> str:
    """`docker import` a busybox-static root filesystem as `image` unless it exists."""
    if d.docker("images", "-q", image):
        return image
    import_busybox([docker_cli(), "import", "-", image], d.env, d.root)
    return image


def import_busybox(cmd: list[str], env: dict[str, str], workdir: str) -> None:
    """Feed a busybox-static root filesystem (sleep, ping, nc, httpd...) as a tar to an
    image import command (`docker import - IMAGE`, `podman import - IMAGE`)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise UserError("busybox is not installed (./run setup installs busybox-static)")
    with tempfile.TemporaryDirectory(dir=workdir) as rootfs:
        os.makedirs(f"{rootfs}/bin")
        os.makedirs(f"{rootfs}/www")
        shutil.copy(busybox, f"{rootfs}/bin/busybox")
        for applet in BUSYBOX_APPLETS:
            os.symlink("busybox", f"{rootfs}/bin/{applet}")
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        res = subprocess.run(
            cmd, env=env, stdin=tar.stdout, capture_output=True, text=True, timeout=120
        )
        tar.wait()
        if res.returncode != 0:
            raise UserError(f"{' '.join(cmd[:2])}: {res.stderr.strip()}")


def stop(d: Daemon) -> None:
    """Containers, daemon, left-over processes and mounts: all gone afterwards."""
    if d.running():
        with contextlib.suppress(Exception):
            ids = d.docker("ps", "-aq", check=False, timeout=30).split()
            if ids:
                d.docker("rm", "-f", *ids, check=False, timeout=60)
    pid = d.pid()
    if pid is not None:
        terminate(pid, 15.0)
    remove_root(d.root)


def remove_root(root: str) -> None:
    """Kill what still names `root` on its command line (containerd, shims, conmon),
    unmount what is mounted under it, remove it."""
    for other in processes_naming(root):
        terminate(other, 5.0)
    for mount in sorted(_mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)


def terminate(pid: int, wait_s: float) -> None:
    """SIGTERM, then SIGKILL after wait_s unless it exited (or is a zombie)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            if _zombie(pid):
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def processes_naming(root: str) -> list[int]:
    """Pids whose command line mentions our directory (containerd, its shims)."""
    found = []
    needle = root.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _mounts_under(root: str) -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    return [p for p in points if p == root or p.startswith(root.rstrip("/") + "/")]
