"""The kernel matrix: boot Debian kernels under qemu and run vethtrace's probe checks inside.

Our own machines' kernel has no kprobes, so the probes the design rests on
(veth_xmit, br_handle_frame) can only be proven on kernels that have them. This
runner fetches Debian kernels with their matching headers from the archive (a
private APT configuration: the host's sources are never touched), builds one
small root filesystem per userspace (each kernel paired with a bcc new enough
for its headers), boots each kernel under qemu with software emulation (TCG:
KVM does not run guests on our machines) and runs scripts/kernels/guest_checks.py
inside. The working tree and the pinned pure-Python dependencies reach the
guest over read-only 9p shares, so a code change needs no image rebuild and the
guest needs no network.

    python scripts/kernels/matrix.py [--kernels 6.1 5.10] [--lanes 2] [--json FILE]

Exit status 0 when every test passed on every kernel, 1 otherwise. Downloads
and images are cached under /var/cache/vethtrace/kernels/ (VK_WORK elsewhere:
outside the source tree, so no linter, test collector or project snapshot walks
gigabytes of images); guest logs of failing runs stay in its runs/<time>/<kernel>/.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORK = Path(os.environ.get("VK_WORK", "/var/cache/vethtrace/kernels"))
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEBIAN = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"

# Guest packages: bcc's Python bindings and what the seed lab and the checks call.
GUEST_PACKAGES = ["python3-bpfcc", "iproute2", "iputils-ping", "nftables", "procps", "kmod"]
# Modules the initramfs loads to reach the root disk and the 9p shares.
INITRD_MODULES = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "9pnet_virtio", "9p"]
# Of a kernel's modules, the guest needs only the network stack, filesystems and virtio.
KEEP_MODULE_DIRS = ["arch", "crypto", "fs", "lib", "net", "drivers/net", "drivers/virtio",
                    "drivers/block"]

QEMU = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "1536",
        "-nographic", "-no-reboot", "-nic", "none"]
BOOT_TIMEOUT = int(os.environ.get("VK_BOOT_TIMEOUT", "150"))  # no VK_BOOTED by then: kill
GUEST_TIMEOUT = int(os.environ.get("VK_GUEST_TIMEOUT", "1200"))  # whole guest run


@dataclass(frozen=True)
class KernelSpec:
    """A kernel line and the archive suite it comes from, paired with a userspace
    whose bcc compiles against its headers (bookworm's bcc 0.26 fails on 6.12)."""

    name: str
    mirror: str
    suite: str
    userspace: str


KERNELS = {
    "5.10": KernelSpec("5.10", SECURITY, "bullseye-security", "bookworm"),
    "6.1": KernelSpec("6.1", SECURITY, "bookworm-security", "bookworm"),
    "6.12": KernelSpec("6.12", DEBIAN, "bookworm-backports", "trixie"),
}


@dataclass
class LaneResult:
    kernel: str
    release: str = "?"
    userspace: str = "?"
    tests: dict[str, tuple[bool, str]] = field(default_factory=dict)  # name -> (ok, detail)
    plan: str = ""  # doctor's probe plan
    trace_plan: str = ""  # the plan trace attached with (after the lab loaded veth/bridge)
    error: str = ""  # infrastructure failure (fetch, build, boot)
    times: dict[str, float] = field(default_factory=dict)
    log_dir: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.tests) and all(ok for ok, _ in self.tests.values())


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
       capture: bool = False) -> str:
    """Run a host command; on failure raise with its stderr so the table says why."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(map(str, cmd))[:120]}: exit {proc.returncode}: "
                           + " | ".join(tail))
    return proc.stdout if capture else ""


@contextlib.contextmanager
def work_lock(name: str) -> Iterator[None]:
    """Serialise building one cached thing, across lanes and across runs (two people
    running the test suite at once share the work directory)."""
    path = WORK / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def tmp_env() -> dict[str, str]:
    """qemu's snapshot overlay and mmdebstrap write to $TMPDIR: keep it in the work dir."""
    (WORK / "tmp").mkdir(parents=True, exist_ok=True)
    return {**os.environ, "TMPDIR": str(WORK / "tmp")}


# --- fetching kernels -----------------------------------------------------------------


def private_apt(spec: KernelSpec) -> dict[str, str]:
    """An APT root of our own (sources, lists, cache) for one suite; returns the env
    that points apt-get at it. The host's /etc/apt is not read for sources."""
    root = WORK / "apt" / spec.suite
    for d in ["etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d",
              "var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/lib/dpkg"]:
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").touch()
    (root / "etc/apt/sources.list").write_text(
        f"deb [signed-by={KEYRING}] {spec.mirror} {spec.suite} main\n")
    (root / "apt.conf").write_text(
        f'Dir "{root}/";\n'
        f'Dir::State::status "{root}/var/lib/dpkg/status";\n'
        'APT::Architecture "amd64";\nAPT::Architectures { "amd64"; };\n'
        'Acquire::Check-Valid-Until "false";\nAcquire::Languages "none";\n'
        'Acquire::Retries "3";\n')
    env = {**os.environ, "APT_CONFIG": str(root / "apt.conf")}
    sh("apt-get", "update", "-q", env=env)
    return env


def depends_on(pkg: str, prefix: str, env: dict[str, str]) -> str:
    out = sh("apt-cache", "depends", "--no-recommends", "--no-suggests", pkg,
             env=env, capture=True)
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(\S+)", line)
        if m and m.group(1).startswith(prefix):
            return m.group(1)
    raise RuntimeError(f"{pkg}: no dependency named {prefix}* in the archive")


def fetch_kernel(spec: KernelSpec) -> Path:
    with work_lock(f"kernel-{spec.suite}"):
        return _fetch_kernel(spec)


def _fetch_kernel(spec: KernelSpec) -> Path:
    """Download the suite's current kernel image and its headers (both halves: bcc
    needs lib/modules/R/build and .../source), unpack them into one tree, keep only
    the modules a network guest needs, and run depmod. Returns the tree."""
    try:
        env = private_apt(spec)
        image = depends_on("linux-image-amd64", "linux-image-", env)
    except RuntimeError:
        cached = sorted(WORK.glob(f"kernels/{spec.name}.*/.complete"))
        if not cached:
            raise
        say(f"{spec.name}: archive unreachable, using the cached {cached[-1].parent.name}")
        return cached[-1].parent
    release = image.removeprefix("linux-image-")
    if not release.startswith(spec.name + "."):
        raise RuntimeError(f"{spec.suite} offers {release}, not a {spec.name} kernel")
    kdir = WORK / "kernels" / release
    if (kdir / ".complete").exists():
        return kdir
    say(f"{spec.name}: downloading and unpacking {release} ({spec.suite})")
    headers = f"linux-headers-{release}"
    common = depends_on(headers, "linux-headers-", env)  # ...-common
    debs = WORK / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    sh("apt-get", "download", "-q", image, headers, common, cwd=debs, env=env)
    shutil.rmtree(kdir, ignore_errors=True)
    tree = kdir / "tree"
    tree.mkdir(parents=True)
    for pkg in (image, headers, common):
        deb = next(debs.glob(f"{pkg}_*.deb"))
        sh("dpkg-deb", "-x", deb, tree)
    prune_modules(tree / "lib/modules" / release)
    sh("depmod", "-b", tree, release)
    build = tree / "lib/modules" / release / "build"
    if not build.is_symlink() and not build.exists():
        build.symlink_to(f"/usr/src/linux-headers-{release}")
    source = tree / "lib/modules" / release / "source"
    if not source.is_symlink() and not source.exists():
        source.symlink_to(f"/usr/src/{common}")
    shutil.copy(next((tree / "boot").glob("vmlinuz-*")), kdir / "vmlinuz")
    (kdir / ".complete").write_text(release + "\n")
    return kdir


def prune_modules(mods: Path) -> None:
    """Drop GPU, sound, storage... modules (most of the package) and decompress the
    rest: busybox insmod in the initramfs cannot read .ko.xz."""
    kernel = mods / "kernel"
    keep = {kernel / d for d in KEEP_MODULE_DIRS}
    for path in sorted(kernel.rglob("*"), key=lambda p: len(p.parts)):
        if not path.exists() or path in keep:
            continue
        if any(k.is_relative_to(path) for k in keep):
            continue  # an ancestor of something we keep
        if not any(path.is_relative_to(k) for k in keep):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    xz = [str(p) for p in kernel.rglob("*.ko.xz")]
    zst = [str(p) for p in kernel.rglob("*.ko.zst")]
    for i in range(0, len(xz), 200):
        sh("xz", "-d", *xz[i:i + 200])
    for p in zst:
        sh("zstd", "-q", "-d", "--rm", p)


def initrd(kdir: Path) -> Path:
    """The kernel's initramfs, rebuilt whenever initrd_init.sh or the module list change."""
    key = hashlib.sha1((HERE / "initrd_init.sh").read_bytes()
                       + " ".join(INITRD_MODULES).encode()).hexdigest()[:10]
    out = kdir / f"initrd-{key}.gz"
    with work_lock(f"initrd-{kdir.name}"):
        if not out.exists():
            for old in kdir.glob("initrd-*.gz"):
                old.unlink()
            make_initrd(kdir / "tree", kdir.name, out)
    return out


def make_initrd(tree: Path, release: str, out: Path) -> None:
    """A busybox initramfs that loads virtio/ext4/9p in dependency order, mounts the
    root image and the shares, and hands over to scripts/kernels/guest_init.sh."""
    root = out.parent / "initrd"
    shutil.rmtree(root, ignore_errors=True)
    for d in ["bin", "mods", "proc", "sys", "dev", "newroot"]:
        (root / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    order: list[str] = []
    for mod in INITRD_MODULES:
        out_text = sh("modprobe", "-d", tree, "-S", release, "--show-depends", mod,
                      capture=True)
        for line in out_text.splitlines():
            if line.startswith("insmod "):
                path = Path(line.split()[1])
                if path.name not in order:
                    order.append(path.name)
                    src = path if path.exists() else tree / str(path).lstrip("/")
                    shutil.copy(src, root / "mods" / path.name)
    (root / "mods/order").write_text("\n".join(order) + "\n")
    shutil.copy(HERE / "initrd_init.sh", root / "init")
    (root / "init").chmod(0o755)
    cpio = subprocess.run("find . | cpio -o -H newc --quiet | gzip -1", shell=True, cwd=root,
                          stdout=subprocess.PIPE, check=True)
    out.with_suffix(".tmp").write_bytes(cpio.stdout)
    out.with_suffix(".tmp").rename(out)
    shutil.rmtree(root)


# --- guest userspace ------------------------------------------------------------------

def base_image(userspace: str) -> Path:
    """One root filesystem image per Debian release, with bcc from that release.
    Built with mmdebstrap (its own apt config) and cached until the package list changes."""
    with work_lock(f"base-{userspace}"):
        key = hashlib.sha1(" ".join([userspace, *GUEST_PACKAGES]).encode()).hexdigest()[:10]
        img = WORK / "base" / f"{userspace}-{key}.img"
        if img.exists():
            return img
        img.parent.mkdir(parents=True, exist_ok=True)
        rootfs = WORK / "base" / f"{userspace}-rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        say(f"building the {userspace} guest root filesystem (mmdebstrap)")
        sh("mmdebstrap", "--mode=root", "--variant=minbase", "--quiet",
           "--aptopt=Acquire::Check-Valid-Until \"false\"",
           "--dpkgopt=path-exclude=/usr/share/{doc,man,locale,info}/*",
           f"--include={','.join(GUEST_PACKAGES)}",
           "--customize-hook=mkdir -p \"$1/vk/project\" \"$1/vk/pylib\" \"$1/vk/kernel\""
           " \"$1/vk/results\"",
           userspace, rootfs, f"deb [signed-by={KEYRING}] {DEBIAN} {userspace} main",
           env=tmp_env())
        tmp = img.with_suffix(".tmp")
        size_mb = dir_size_mb(rootfs) + 600  # room for bcc's and the tests' writes
        sh("mke2fs", "-q", "-t", "ext4", "-L", "vkroot", "-d", rootfs, "-F", tmp, f"{size_mb}M")
        tmp.rename(img)
        shutil.rmtree(rootfs)
        return img


def dir_size_mb(path: Path) -> int:
    return int(sh("du", "-sm", path, capture=True).split()[0])


def pylib() -> Path:
    """The project's pinned runtime dependencies (pure Python) installed into a plain
    directory that the guest puts on PYTHONPATH: the guest has no network."""
    with work_lock("pylib"):
        deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        key = hashlib.sha1(" ".join(deps).encode()).hexdigest()[:10]
        target = WORK / f"pylib-{key}"
        if not target.exists():
            tmp = target.with_suffix(".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            sh(sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
               "--no-compile", "--only-binary=:all:", "--target", tmp, *deps)
            tmp.rename(target)
        return target


def project_snapshot(dest: Path) -> Path:
    """The working tree as it is now (tracked and new files, not ignored ones), so the
    guest runs exactly the code under test even while people keep editing."""
    files = sh("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard",
               cwd=REPO, capture=True).split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


# --- booting --------------------------------------------------------------------------


def boot(kdir: Path, image: Path, project: Path, libs: Path, out: Path,
         tests: list[str]) -> tuple[int, str]:
    """Boot one guest and wait for it to power itself off. A boot watchdog kills a guest
    that never reaches its init (KVM-style silent hangs); `timeout` bounds the run."""
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "config.json").write_text(json.dumps({"tests": tests}))
    log = out / "serial.log"
    share = "security_model=none,readonly=on"
    cmd = ["timeout", "-k", "5", str(GUEST_TIMEOUT), *QEMU,
           "-kernel", str(kdir / "vmlinuz"), "-initrd", str(initrd(kdir)),
           "-drive", f"file={image},if=virtio,format=raw,snapshot=on",
           "-virtfs", f"local,path={project},mount_tag=project,{share}",
           "-virtfs", f"local,path={libs},mount_tag=pylib,{share}",
           "-virtfs", f"local,path={kdir / 'tree'},mount_tag=kernel,{share}",
           "-virtfs", f"local,path={results},mount_tag=results,security_model=none",
           "-append", "console=ttyS0 panic=-1 quiet"]
    (out / "qemu.cmd").write_text(" ".join(cmd) + "\n")
    with open(log, "wb") as fh:
        # own process group: the watchdog and an interrupted run kill timeout *and* qemu
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, env=tmp_env(), start_new_session=True)
        _guests.add(proc)
        try:
            started = time.monotonic()
            while proc.poll() is None:
                time.sleep(1)
                if (time.monotonic() - started > BOOT_TIMEOUT
                        and b"VK_BOOTED" not in log.read_bytes()):
                    kill_guest(proc)
                    return 125, f"no VK_BOOTED within {BOOT_TIMEOUT}s (boot watchdog)"
        finally:
            kill_guest(proc)
            _guests.discard(proc)
    text = clean(log.read_bytes())
    (out / "serial.txt").write_text(text)
    if proc.returncode == 124:
        return 124, f"guest timed out after {GUEST_TIMEOUT}s"
    return proc.returncode, ""


_guests: set[subprocess.Popen] = set()


def kill_guest(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def clean(raw: bytes) -> str:
    """Serial output without carriage returns and terminal escape codes."""
    text = raw.decode("utf-8", "replace").replace("\r", "")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1bc", "", text)


def parse_results(text: str, res: LaneResult) -> None:
    """Lines the guest prints: `VK_TEST <name> PASS|FAIL <detail>`, `VK_PLAN <text>`."""
    for line in text.splitlines():
        m = re.match(r"VK_TEST (\S+) (PASS|FAIL) ?(.*)", line.strip())
        if m:
            res.tests[m.group(1)] = (m.group(2) == "PASS", m.group(3))
        m = re.match(r"VK_PLAN (.*)", line.strip())
        if m:
            res.plan = m.group(1)
        m = re.match(r"VK_TRACE_PLAN (.*)", line.strip())
        if m:
            res.trace_plan = m.group(1)
        m = re.match(r"VK_BOOTED (\S+) ([\d.]+)", line.strip())
        if m:
            res.release = m.group(1)
            res.times["guest uptime at init"] = float(m.group(2))
        m = re.match(r"VK_TIME (\S+) ([\d.]+)", line.strip())
        if m:
            res.times[m.group(1)] = float(m.group(2))


def run_lane(name: str, run_dir: Path, project: Path, tests: list[str]) -> LaneResult:
    spec = KERNELS[name]
    res = LaneResult(kernel=name, userspace=spec.userspace)
    out = run_dir / name
    out.mkdir(parents=True, exist_ok=True)
    res.log_dir = str(out)
    step = time.monotonic()

    def lap(label: str) -> None:
        nonlocal step
        now = time.monotonic()
        res.times[label] = round(now - step, 1)
        step = now

    try:
        say(f"{name}: fetching the kernel and headers ({spec.suite})")
        kdir = fetch_kernel(spec)
        res.release = kdir.name
        initrd(kdir)
        lap("fetch kernel")
        image = base_image(spec.userspace)
        lap("guest rootfs")
        libs = pylib()
        lap("python deps")
        say(f"{name}: booting {kdir.name} on {spec.userspace} userspace")
        rc, why = boot(kdir, image, project, libs, out, tests)
        lap("boot + tests")
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        res.error = str(exc)
        return res
    parse_results((out / "serial.txt").read_text() if (out / "serial.txt").exists() else "", res)
    if why:
        res.error = why
    elif not res.tests:
        res.error = f"qemu exit {rc}, no test results (see {out}/serial.txt)"
    return res


# --- results --------------------------------------------------------------------------


def short_plan(plan: str) -> str:
    """'veth transmit=kprobe, bridge receive=kprobe, ...' -> 'kprobe/kprobe' (veth/bridge)."""
    veth = re.search(r"veth transmit=(\w+)", plan)
    bridge = re.search(r"bridge receive=(\w+)", plan)
    return f"{veth.group(1)}/{bridge.group(1)}" if veth and bridge else "?"


def table(results: list[LaneResult]) -> str:
    """kernel x check x pass/fail, with the plan (veth/bridge points) the command used."""
    rows = [("kernel", "userspace", "veth/bridge", "check", "result", "detail")]
    for r in results:
        label = r.release.removesuffix("-amd64") if r.release != "?" else r.kernel
        if r.error:
            rows.append((label, r.userspace, "", "(infrastructure)", "FAIL", r.error[:300]))
        for test, (ok, detail) in r.tests.items():
            plan = {"doctor": r.plan, "trace": r.trace_plan}.get(test.split("-")[0])
            rows.append((label, r.userspace, short_plan(plan) if plan is not None else "", test,
                         "pass" if ok else "FAIL", detail))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5]
             for row in rows]
    lines.insert(1, "-" * min(100, max(len(x) for x in lines)))
    plans = [f"{cmd} plan on {r.release}: {plan}" for r in results
             for cmd, plan in (("doctor", r.plan), ("trace", r.trace_plan)) if plan]
    return "\n".join([*lines, "", *plans])


def lane_order(kernels: list[str]) -> list[str]:
    """Start one kernel of each userspace first, so that the root images are built
    side by side in the first lanes instead of one lane waiting for the other."""
    firsts, rest, seen = [], [], set()
    for k in kernels:
        (rest if KERNELS[k].userspace in seen else firsts).append(k)
        seen.add(KERNELS[k].userspace)
    return firsts + rest


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="test-kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", nargs="+", default=os.environ.get("KERNELS", "").split()
                    or list(KERNELS), choices=list(KERNELS), metavar="K",
                    help=f"kernel lines to run (default all: {' '.join(KERNELS)})")
    ap.add_argument("--lanes", type=int, default=int(os.environ.get("LANES", "2")),
                    help="guests booted in parallel (default 2; each uses one CPU)")
    ap.add_argument("--tests", nargs="+", default=["vethtrace"], choices=["smoke", "vethtrace"],
                    help="guest checks: smoke (bcc alone) and/or vethtrace (default)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    # `./run test-kernels KERNELS="6.1 5.10" LANES=1` reads like make's variables: accept it
    argv = list(sys.argv[1:] if argv is None else argv)
    for var in [a for a in argv if re.match(r"(KERNELS|LANES)=", a)]:
        argv.remove(var)
        name, value = var.split("=", 1)
        argv += ["--kernels", *value.split()] if name == "KERNELS" else ["--lanes", value]
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("test-kernels: run as root (mmdebstrap, depmod, images)", file=sys.stderr)
        return 2
    for tool in ("qemu-system-x86_64", "mmdebstrap", "cpio", "busybox", "mke2fs"):
        if not shutil.which(tool) and not Path(f"/bin/{tool}").exists():
            print(f"test-kernels: {tool} missing: run ./run setup", file=sys.stderr)
            return 2
    # SIGTERM (pytest's timeout, CI cancelling) ends the run like Ctrl-C: guests killed
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    run_dir = WORK / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    for old in sorted((WORK / "runs").glob("*"))[:-10] if (WORK / "runs").exists() else []:
        shutil.rmtree(old, ignore_errors=True)  # keep the logs of the last ten runs
    if os.environ.get("VK_PROJECT"):  # experiments: another tree instead of the working tree
        project = Path(os.environ["VK_PROJECT"]).resolve()
    else:
        project = project_snapshot(run_dir / "project")
    pool = ThreadPoolExecutor(max_workers=max(1, args.lanes))
    try:
        futures = {k: pool.submit(run_lane, k, run_dir, project, args.tests)
                   for k in lane_order(args.kernels)}
        results = [futures[k].result() for k in args.kernels]
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(_guests):
            kill_guest(proc)
        print("test-kernels: interrupted; guests killed", file=sys.stderr)
        return 130
    pool.shutdown()
    shutil.rmtree(run_dir / "project", ignore_errors=True)
    for r in results:
        if r.ok and os.environ.get("VK_KEEP_LOGS") != "1":
            shutil.rmtree(r.log_dir, ignore_errors=True)  # logs are kept for failures
    print(table(results))
    for r in results:
        steps = ", ".join(f"{k} {v:.0f}s" for k, v in r.times.items())
        print(f"times {r.kernel}: {steps}")
        if not r.ok:
            print(f"logs {r.kernel}: {r.log_dir}")
    print(f"total {time.monotonic() - started:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ | {"ok": r.ok} for r in results],
                                              indent=2))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
