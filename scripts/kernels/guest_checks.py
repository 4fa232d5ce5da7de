"""The checks a kernel-matrix guest runs (stdlib only: it runs on the guest's python3).

Each check prints one line on the serial console that the host runner parses:
    VK_TEST <name> PASS|FAIL <detail>
plus `VK_PLAN <doctor's probe plan>`, `VK_TRACE_PLAN <trace's>` and
`VK_TIME <step> <seconds>`. Full command output goes to files in the current
directory (the results share, kept for failures).

What is checked is what only a kernel with kprobes can show: `doctor` reports
kprobes available; on the seed lab, `ping` finds the verdict `diverted` at
veth0, and `trace` sees the ARP reply leave veth1 (kprobe veth_xmit) and be
taken from veth0 by br0 (kprobe br_handle_frame).

Which checks run comes from config.json (written by the host), default all:
"smoke" (bcc alone: kprobe on veth_xmit fires on a veth ping) and "vethtrace".
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

PREFIX = "vt-"  # the lab's default prefix: the guest is ours alone
HOST, SONG = f"{PREFIX}host", f"{PREFIX}song"
SONG_IP = "192.168.122.102"
PLANNED_KPROBES = ("veth transmit", "bridge receive")  # plan points that must be kprobes here
CONFIG = json.loads(Path("config.json").read_text()) if Path("config.json").exists() else {}


def report(name: str, ok: bool, detail: str = "") -> bool:
    print(f"VK_TEST {name} {'PASS' if ok else 'FAIL'} {detail}".rstrip(), flush=True)
    return ok


def timed(step: str, started: float) -> None:
    print(f"VK_TIME {step} {time.monotonic() - started:.1f}", flush=True)


def run(*cmd: str, log: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command, keep its stdout/stderr in <log>.out/.err for the failure logs."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc = subprocess.CompletedProcess(cmd, 124, str(exc.stdout or ""), f"timeout {timeout}s")
    Path(f"{log}.out").write_text(proc.stdout)
    Path(f"{log}.err").write_text(f"$ {' '.join(cmd)}\nexit {proc.returncode}\n{proc.stderr}")
    return proc


def last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1][:160] if lines else ""


# --- smoke: the kernel, bcc and the headers work, independent of vethtrace ------------

SMOKE_BPF = r"""
BPF_ARRAY(hits, u64, 1);
int kprobe__veth_xmit(struct pt_regs *ctx) {
    int zero = 0;
    u64 *n = hits.lookup(&zero);
    if (n) __sync_fetch_and_add(n, 1);
    return 0;
}
"""


def smoke() -> None:
    started = time.monotonic()
    try:
        import bcc  # imported here: whether it imports is the check
    except Exception as exc:  # any failure is the finding
        report("smoke-bcc-import", False, repr(exc))
        return
    report("smoke-bcc-import", True, f"bcc {getattr(bcc, '__version__', '?')}")
    for cmd in (["ip", "netns", "add", "vk-a"], ["ip", "netns", "add", "vk-b"],
                ["ip", "-n", "vk-a", "link", "add", "va", "type", "veth", "peer", "vb",
                 "netns", "vk-b"],
                ["ip", "-n", "vk-a", "addr", "add", "10.9.0.1/24", "dev", "va"],
                ["ip", "-n", "vk-b", "addr", "add", "10.9.0.2/24", "dev", "vb"],
                ["ip", "-n", "vk-a", "link", "set", "va", "up"],
                ["ip", "-n", "vk-b", "link", "set", "vb", "up"]):
        subprocess.run(cmd, check=True)
    try:
        prog = bcc.BPF(text=SMOKE_BPF)
        timed("smoke-compile", started)
        subprocess.run(["ip", "netns", "exec", "vk-a", "ping", "-c", "2", "-i", "0.2", "10.9.0.2"],
                       capture_output=True, check=False)
        hits = prog["hits"][0].value
        prog.cleanup()
        report("smoke-kprobe-veth_xmit", hits > 0, f"veth_xmit fired {hits} times")
    except Exception as exc:
        report("smoke-kprobe-veth_xmit", False, repr(exc)[:200])
    finally:
        subprocess.run(["ip", "netns", "del", "vk-a"], check=False)
        subprocess.run(["ip", "netns", "del", "vk-b"], check=False)


# --- vethtrace --------------------------------------------------------------------------


def plan_text(plan: dict | None) -> str:
    """A probe plan (Plan.describe(): doctor --json, recording headers) on one line:
    'veth transmit=kprobe, bridge receive=kprobe, ...; ring buffer'."""
    if not plan:
        return "none"
    points = ", ".join(f"{p.get('point')}={p.get('mechanism')}" for p in plan.get("points", []))
    return f"{points}; {plan.get('delivery')}"


def check_doctor() -> None:
    """doctor must find kprobes usable and plan them for the veth and bridge points."""
    started = time.monotonic()
    proc = run("vethtrace", "doctor", "--json", log="doctor")
    timed("doctor", started)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        report("doctor-kprobes", False, f"exit {proc.returncode}: {last_line(proc.stderr)}")
        return
    if doc.get("compile_seconds") is not None:
        print(f"VK_TIME doctor-bcc-compile {doc['compile_seconds']:.1f}", flush=True)
    checks = doc.get("checks") or {}
    kprobes = checks.get("kprobes") or {}
    report("doctor-kprobes", kprobes.get("ok") is True, str(kprobes.get("detail", "missing")))
    bcc = checks.get("bcc") or {}
    report("doctor-bcc-compile", bcc.get("ok") is True, str(bcc.get("detail", "missing")))
    print(f"VK_PLAN {plan_text(doc.get('plan'))}", flush=True)
    points = {p["point"]: p for p in (doc.get("plan") or {}).get("points", [])}
    mech = {name: (points.get(name) or {}).get("mechanism") for name in PLANNED_KPROBES}
    report("doctor-plan-kprobes", all(m == "kprobe" for m in mech.values()),
           ", ".join(f"{k}: {v}" for k, v in mech.items()))


def check_ping() -> None:
    started = time.monotonic()
    proc = run("vethtrace", "ping", "--from", HOST, SONG, SONG_IP, "--json", log="ping")
    timed("ping", started)
    try:
        res = json.loads(proc.stdout)
    except ValueError:
        report("ping-verdict", False, f"exit {proc.returncode}: {last_line(proc.stderr)}")
        return
    culprit = res.get("culprit") or {}
    ok = (res.get("verdict") == "diverted" and culprit.get("interface") == "veth0"
          and culprit.get("netns") in (HOST, "host") and res.get("reachable") is False
          and proc.returncode == 1)
    report("ping-verdict", ok, f"verdict={res.get('verdict')} culprit={culprit.get('netns')}/"
           f"{culprit.get('interface')} exit={proc.returncode}")


def is_arp_reply(ev: dict) -> bool:
    pkt = ev.get("packet") or {}
    return pkt.get("arp_op") == 2 and pkt.get("arp_spa") == SONG_IP


def pump(stream: IO[str] | None, lines: queue.Queue[str]) -> None:
    for line in stream or []:
        lines.put(line)
    lines.put("")


def check_trace() -> None:
    """Trace ARP in both namespaces while the host pings song; stop as soon as the
    reply was seen at veth_xmit (veth1), br_handle_frame (veth0) and on br0, or a minute
    after the first event (the host re-resolves song every few seconds)."""
    started = time.monotonic()
    inode = {ns: os.stat(f"/run/netns/{ns}").st_ino for ns in (HOST, SONG)}
    out = open("trace.out", "w")  # noqa: SIM115 - closed below
    err = open("trace.err", "w")  # noqa: SIM115
    tracer = subprocess.Popen(["vethtrace", "trace", "arp", "-n", HOST, "-n", SONG, "--json",
                               "--write", "trace.vtrec"],
                              stdout=subprocess.PIPE, stderr=err, text=True)
    pinger = subprocess.Popen(["ip", "netns", "exec", HOST, "ping", "-i", "1", "-W", "1",
                               "-c", "600", SONG_IP],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines: queue.Queue[str] = queue.Queue()  # "" = the tracer's stdout closed
    threading.Thread(target=pump, args=(tracer.stdout, lines), daemon=True).start()
    xmit = taken = into_br0 = None
    deadline = time.monotonic() + float(CONFIG.get("trace_timeout", 400))  # bcc compile
    first = None
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if not line:
            break  # the tracer exited
        out.write(line)
        if first is None:
            first = time.monotonic()
            timed("trace-first-event", started)
            deadline = min(deadline, first + float(CONFIG.get("trace_after_first", 60)))
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if not isinstance(ev, dict) or not is_arp_reply(ev):
            continue
        # interface name and netns inode come from BTF offsets (net_device, net):
        # matching them with what we know proves the offsets right on this kernel
        where = (ev.get("point"), ev.get("ifname"), ev.get("netns"))
        if where == ("veth_xmit", "veth1", inode[SONG]) and xmit is None:
            xmit = ev
        elif where == ("br_handle_frame", "veth0", inode[HOST]) and taken is None:
            taken = ev
        elif where[1:] == ("br0", inode[HOST]) and into_br0 is None:
            into_br0 = ev
        if xmit and taken and into_br0:
            break
    tracer.send_signal(signal.SIGINT)
    try:
        tracer.wait(timeout=30)
    except subprocess.TimeoutExpired:
        tracer.kill()
        tracer.wait()
    with contextlib.suppress(queue.Empty):  # what the tracer printed while stopping
        while line := lines.get(timeout=2.0):
            out.write(line)
    pinger.kill()
    out.close()
    err.close()
    timed("trace", started)
    with contextlib.suppress(OSError, ValueError):  # the plan trace attached with
        header = json.loads(Path("trace.vtrec").read_text().split("\n", 1)[0])
        print(f"VK_TRACE_PLAN {plan_text(header.get('plan'))}", flush=True)
    report("trace-arp-reply-veth_xmit", xmit is not None,
           f"{SONG}/veth1 veth_xmit" if xmit else
           f"no ARP reply at veth_xmit on {SONG}/veth1 (trace exit {tracer.returncode})")
    report("trace-arp-reply-br_handle_frame", taken is not None,
           f"{HOST}/veth0 br_handle_frame" if taken else
           f"no ARP reply at br_handle_frame on {HOST}/veth0")
    report("trace-arp-reply-taken-by-br0", into_br0 is not None,
           f"{HOST}/br0 {into_br0.get('point')}" if into_br0 else
           f"no ARP reply event on {HOST}/br0")


def facts() -> None:
    """What the probes depend on, for the failure logs: module BTF, symbols, tracepoints."""
    lines = [f"kernel {os.uname().release}"]
    btf = Path("/sys/kernel/btf")
    lines.append("btf: " + " ".join(sorted(p.name for p in btf.iterdir())) if btf.exists()
                 else "btf: none")
    syms = {"veth_xmit", "br_handle_frame", "br_forward", "br_pass_frame_up"}
    with open("/proc/kallsyms") as fh:
        found = {parts[2] + (f" [{parts[3].strip('[]')}]" if len(parts) > 3 else "")
                 for parts in (line.split() for line in fh) if parts[2] in syms}
    lines.append("kallsyms: " + ", ".join(sorted(found)))
    for tp in ("skb/kfree_skb", "skb/consume_skb", "bridge/br_fdb_update"):
        fmt = Path("/sys/kernel/tracing/events") / tp / "format"
        fields = [x.split(";")[0].strip() for x in fmt.read_text().splitlines()
                  if "field:" in x and "common_" not in x] if fmt.exists() else ["missing"]
        lines.append(f"tracepoint {tp}: {' | '.join(fields)}")
    Path("facts.txt").write_text("\n".join(lines) + "\n")


def vethtrace_checks() -> None:
    check_doctor()
    up = run("vethtrace", "lab", "up", "seed", log="lab-up")
    if not report("lab-up-seed", up.returncode == 0, last_line(up.stderr)):
        return
    try:
        facts()
        check_ping()
        check_trace()
    finally:
        run("vethtrace", "lab", "down", "seed", log="lab-down")


def main() -> int:
    print(f"VK_GUEST kernel={os.uname().release} python={sys.version.split()[0]}", flush=True)
    wanted = CONFIG.get("tests", ["smoke", "vethtrace"])
    for name, check in (("smoke", smoke), ("vethtrace", vethtrace_checks)):
        if name in wanted:
            try:
                check()
            except Exception as exc:  # a failed check, not a crash
                report(f"{name}-crashed", False, repr(exc)[:200])
    return 0


if __name__ == "__main__":
    sys.exit(main())
