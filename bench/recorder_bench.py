"""What the flight recorder costs, in one run (issue #18's targets):

1. throughput of a flow that drops nothing, recorder on vs off: iperf3 TCP and
   64-byte UDP at a rate its receiver keeps up with (--udp-pps; unthrottled,
   its socket buffer drops a share, and those drops are recorded) between two
   namespaces on a bridge (the `bridge-two` lab), client and server pinned to
   one CPU each, conditions alternating (off on off on ...), medians and the
   ratio on/off (target >= 0.99), and what the recorder's BPF programs cost
   each packet, timed by the kernel (the noise-free measure on a shared machine);
2. drops: a sender's own nft output chain drops its datagrams
   (NETFILTER_DROP), at increasing rates; per rate: packets the rule
   dropped (its counter, the kernel's truth), drops the recording holds for
   that place, events the recorder counted as lost, and the recorder's CPU
   (utime+stime of its process over the run). Below the stated rate nothing
   may be missing; above it, what is missing must be counted as lost;
3. soak with churn: a namespace (with a veth and an address) created and
   deleted every second for --soak seconds while the recorder runs; its RSS
   sampled every 10 s (flat = no growth beyond the first minute's), and
   whether every namespace was followed ("namespace appeared" and
   "vanished" in the recording).

    flock /tmp/vethtrace-bench.lock .venv/bin/python bench/recorder_bench.py [--seconds 5]
        [--reps 4] [--rates 20000 50000 100000 150000] [--soak 600] [--parts throughput,drops,soak]

`--soak 30` is the smoke version. Writes markdown tables on stdout. Needs root
and iperf3.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
VETHTRACE = str(Path(sys.executable).parent / "vethtrace")
HZ = os.sysconf("SC_CLK_TCK")

# The iperf3 runs (pinned client and server, 64-byte UDP) and BPF stats are trace_bench's.
from trace_bench import CLIENT_CPU, SERVER_CPU  # noqa: E402
from trace_bench import iperf_json as iperf  # noqa: E402


def sh(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)


class Recorder:
    """`vethtrace record --continuous` in a fresh directory, as a user runs it."""

    def __init__(self, *extra: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="vtrecbench-")
        self.proc = subprocess.Popen(
            [VETHTRACE, "record", "--continuous", f"{self.dir}/rec", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if "recording to" not in line:
            raise RuntimeError(f"recorder did not start: {line}{self.proc.stderr.read()}")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        return f"{self.dir}/rec"


def rate(data: dict, proto: str) -> float:
    """TCP: Gbit/s received; UDP: kpackets/s sent."""
    if proto == "tcp":
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
    s = data["end"]["sum"]
    return float(s["packets"]) / float(s["seconds"]) / 1e3


# --- 1. throughput -----------------------------------------------------------------


def packets(data: dict, proto: str) -> int:
    if proto == "tcp":  # segments of at most one MSS (1448 B with timestamps)
        return max(1, int(data["end"]["sum_sent"]["bytes"]) // 1448)
    return int(data["end"]["sum"]["packets"])


def throughput(lab: dict[str, str], seconds: int, reps: int, udp_pps: int) -> None:
    """Ratio of medians, and (noise-free) what the recorder's BPF programs cost
    the flow: their runs and run time per packet, timed by the kernel."""
    from trace_bench import enable_bpf_stats, prog_stats

    print("\n### Throughput of a flow that drops nothing, recorder off vs on\n")
    print(f"iperf3 {seconds} s per run, {reps} runs per condition, alternating; medians. "
          "BPF: the recorder's programs during the 'on' runs, timed by the kernel "
          "(BPF_ENABLE_STATS), per packet of the flow.\n")  # fmt: skip
    print("| flow | off | on | on/off | BPF runs/packet | BPF ns/packet |")
    print("|---|---|---|---|---|---|")
    stats_fd = enable_bpf_stats()
    try:
        for proto in ("tcp", "udp"):
            off: list[float] = []
            on: list[float] = []
            runs: list[float] = []
            ns: list[float] = []
            for _ in range(reps):
                pps = udp_pps if proto == "udp" else None
                off.append(rate(iperf(lab["a"], proto, seconds, pps), proto))
                rec = Recorder()
                try:
                    t0, c0 = prog_stats(rec.proc.pid)
                    data = iperf(lab["a"], proto, seconds, pps)
                    t1, c1 = prog_stats(rec.proc.pid)
                    on.append(rate(data, proto))
                    runs.append((c1 - c0) / packets(data, proto))
                    ns.append((t1 - t0) / packets(data, proto))
                finally:
                    rec.stop()
            unit = "Gbit/s" if proto == "tcp" else "kpps sent"
            name = "TCP" if proto == "tcp" else f"UDP 64 B at {udp_pps} pps"
            m_off, m_on = statistics.median(off), statistics.median(on)
            print(f"| {name} | {m_off:.2f} {unit} | {m_on:.2f} {unit} | {m_on / m_off:.3f} | "
                  f"{statistics.median(runs):.4f} | {statistics.median(ns):.2f} |")  # fmt: skip
            runs_txt = f"off {[round(x, 2) for x in off]} on {[round(x, 2) for x in on]}"
            print(f"<!-- {proto} {runs_txt} -->")
    finally:
        os.close(stats_fd)


# --- 2. drops ----------------------------------------------------------------------

# The drops come from a sender whose own output chain drops its datagrams: each
# one is an skb freed with NETFILTER_DROP, at a rate a Python loop reaches
# (~130 k/s on our machines), which a flow through a bridge would not.
NFT_DROP = """table inet vtbench {
  chain output {
    type filter hook output priority 0; udp dport 9 counter drop
  }
}
"""
SENDER = """
import socket, sys, time
pps, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst, payload, batch = ("10.1.1.2", 9), b"x" * 64, 100
t0 = time.perf_counter()
n = 0
while True:
    now = time.perf_counter()
    if now - t0 >= seconds:
        break
    ahead = n / pps - (now - t0)
    if ahead > 0:
        time.sleep(ahead)
    for _ in range(batch):
        try:
            s.sendto(payload, dst)
        except OSError:
            pass
    n += batch
"""


def nft_count(ns: str) -> int:
    out = sh("ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", "vtbench").stdout
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if rule:
            for expr in rule["expr"]:
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
    return 0


def recorded(directory: str, inode: int, since: float) -> tuple[int, int]:
    """(NETFILTER_DROP drops recorded in that namespace, events noted as lost)."""
    from vethtrace.recorder.segments import read_dir

    rd = read_dir(directory, since=since - 5)
    drops = sum(
        e.data["count"] for e in rd.entries
        if e.kind == "drops" and e.data["netns"] == inode and e.data["reason"] == "NETFILTER_DROP"
    )  # fmt: skip
    # per-second notes plus the end records' remainders: the collector's total
    lost = sum(int(e.data.get("lost") or 0) for e in rd.entries if e.kind == "note")
    lost += sum(s.lost for s in rd.segments)
    return drops, lost


def drops(prefix: str, seconds: int, rates: list[int]) -> None:
    from vethtrace.netns import inode_of

    ns = f"{prefix}flood"
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "addr", "add", "10.1.1.1/24", "dev", "lo")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=NFT_DROP, text=True,
                   check=True)  # fmt: skip
    inode = inode_of(ns)
    print("\n### Drops: recorder CPU and completeness by drop rate\n")
    print(f"A sender whose output chain drops its 64-byte datagrams, {seconds} s a rate, pinned "
          f"to CPU {CLIENT_CPU}; 'dropped' is the nft rule's counter.\n")  # fmt: skip
    print("| asked/s | dropped/s | recorded | missing | counted lost | recorder CPU |")
    print("|---|---|---|---|---|---|")
    try:
        for pps in rates:
            rec = Recorder()
            try:
                time.sleep(1.0)
                before, cpu0, t0 = nft_count(ns), rec.cpu_s(), time.time()
                sh("ip", "netns", "exec", ns, "taskset", "-c", CLIENT_CPU, sys.executable, "-c",
                   SENDER, str(pps), str(seconds), timeout=seconds + 30)  # fmt: skip
                time.sleep(0.3)
                dropped, cpu1, t1 = nft_count(ns) - before, rec.cpu_s(), time.time()
            finally:
                directory = rec.stop()
            got, lost = recorded(directory, inode, t0)
            missing = max(0, dropped - got)
            print(f"| {pps:,} | {dropped / seconds:,.0f} | {got:,} | {missing:,} | {lost:,} | "
                  f"{100 * (cpu1 - cpu0) / (t1 - t0):.0f}% |")  # fmt: skip
    finally:
        sh("ip", "netns", "del", ns)


# --- 3. soak -----------------------------------------------------------------------


def soak(prefix: str, seconds: int) -> None:
    print(f"\n### Soak: {seconds} s, a namespace created and deleted every second\n")
    rec = Recorder("--no-drops")
    samples: list[tuple[float, float]] = []
    names: list[str] = []
    t0 = time.monotonic()
    try:
        i = 0
        while time.monotonic() - t0 < seconds:
            ns = f"{prefix}churn{i}"
            names.append(ns)
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "add", "c0", "type", "veth", "peer", "name", "c1")
            sh("ip", "-n", ns, "addr", "add", "10.66.0.1/24", "dev", "c0")
            sh("ip", "-n", ns, "link", "set", "c0", "up")
            time.sleep(0.5)
            sh("ip", "netns", "del", ns)
            if i % 10 == 0:
                samples.append((time.monotonic() - t0, rec.rss_mib()))
            i += 1
            time.sleep(max(0.0, t0 + i - time.monotonic()))
        time.sleep(1.0)
        samples.append((time.monotonic() - t0, rec.rss_mib()))
        cpu = rec.cpu_s()
    finally:
        directory = rec.stop()
        for ns in names:
            sh("ip", "netns", "del", ns)
    from vethtrace.recorder.segments import read_dir

    rd = read_dir(directory, since=0)
    appeared = {e.data["name"] for e in rd.entries if e.kind == "change"
                and e.data["action"] == "added" and e.data["name"] in names}  # fmt: skip
    vanished = {e.data["name"] for e in rd.entries if e.kind == "change"
                and e.data["action"] == "removed" and e.data["name"] in names}  # fmt: skip
    first_min = [r for t, r in samples if t <= 60] or [samples[0][1]]
    print(f"namespaces {len(names)}: appeared {len(appeared)}, vanished {len(vanished)}; "
          f"recorder CPU {100 * cpu / seconds:.1f}%\n")  # fmt: skip
    print("| t (s) | RSS (MiB) |")
    print("|---|---|")
    for t, r in samples:
        print(f"| {t:.0f} | {r:.1f} |")
    print(f"\nRSS: first minute max {max(first_min):.1f} MiB, end {samples[-1][1]:.1f} MiB, "
          f"max {max(r for _, r in samples):.1f} MiB")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--udp-pps", type=int, default=20000,
                    help="UDP flow rate: unthrottled, the receiver's socket drops some")
    ap.add_argument("--rates", type=int, nargs="*", default=[20000, 50000, 100000, 150000])
    ap.add_argument("--soak", type=int, default=600, help="soak seconds (30: smoke run)")
    ap.add_argument("--parts", default="throughput,drops,soak")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    from vethtrace.lab import down, up

    prefix = f"vtrbench{os.getpid() % 10000}-"
    print(f"## recorder bench — {time.strftime('%Y-%m-%d %H:%M')}, kernel {os.uname().release}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    lab_obj = up("bridge-two", prefix)
    lab = {n: lab_obj.ns(n) for n in ("sw", "a", "b")}
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab["b"], "taskset", "-c", SERVER_CPU, "iperf3", "-s"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    try:
        if "throughput" in parts:
            throughput(lab, args.seconds, args.reps, args.udp_pps)
        if "drops" in parts:
            drops(prefix, args.seconds, args.rates)
        if "soak" in parts:
            soak(prefix, args.soak)
    finally:
        server.terminate()
        server.wait(10)
        down("bridge-two", prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
