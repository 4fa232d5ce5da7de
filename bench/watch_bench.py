"""`vethtrace watch` under a flood it has to show: does the screen keep up, does
memory stay flat, is the loss shown?

Set-up: the `bridge-two` lab (a ⇄ br0 ⇄ b); iperf3 UDP with 64-byte datagrams
at full speed from a to b; `vethtrace watch udp -n a -n sw -n b` (a filter that
matches the flood) full-screen in a private tmux at 120x40. Measured:

- frame time: how long each redraw takes (rebuild packet paths + render),
  and the interval between redraws (target 0.2 s), p50/p99/max, as written by
  watch itself (VETHTRACE_WATCH_FRAMES);
- RSS of the watch process sampled every 2 s over the run (first sample after
  a 10 s warm-up vs. the last, and the slope);
- events shown, events lost (header of the screen and watch's own count);
- time from `q` to the process gone;
- iperf3 packets/s with watch running, and untraced just before (same run).

    sudo .venv/bin/python bench/watch_bench.py [--seconds 300]

Prints a markdown table and one JSON line. Needs root, iperf3, tmux.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.tmux import Tmux  # noqa: E402  (after the sys.path insert)

VETHTRACE = str(Path(sys.executable).parent / "vethtrace")
SERVER_IP = "10.0.0.2"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def iperf(client_ns: str, seconds: float) -> dict[str, float]:
    """One UDP 64-byte flood at full speed; packets/s and loss as iperf3 saw them."""
    out = subprocess.run(
        ["ip", "netns", "exec", client_ns, "iperf3", "-c", SERVER_IP, "-u", "-l", "64",
         "-b", "0", "-t", str(int(seconds)), "-J"],
        capture_output=True, text=True, timeout=seconds + 60,
    )  # fmt: skip
    data = json.loads(out.stdout)
    end = data["end"]["sum"]
    return {
        "pps": end["packets"] / end["seconds"],
        "lost_percent": end.get("lost_percent", 0.0),
    }


def wait_for(fn, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"watch_bench: timed out waiting for {what}")


def measure(seconds: float, prefix: str, baseline_s: float = 10.0) -> dict:  # type: ignore[type-arg]
    from vethtrace.lab import down, up

    lab = up("bridge-two", prefix)
    a, b, sw = lab.ns("a"), lab.ns("b"), lab.ns("sw")
    server = subprocess.Popen(
        ["ip", "netns", "exec", b, "iperf3", "-s"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    frames_file = Path(tempfile.mkstemp(prefix="watch-frames-", suffix=".json")[1])
    tmux = None
    try:
        time.sleep(0.5)
        baseline = iperf(a, baseline_s) if baseline_s else {"pps": float("nan")}
        tmux = Tmux(
            f"vethtrace-bench-{uuid.uuid4().hex[:6]}",
            f"VETHTRACE_WATCH_FRAMES={frames_file} {VETHTRACE} watch udp -n {a} -n {sw} -n {b}; "
            "sleep 600"
        )
        wait_for(lambda: " tracing " in tmux.screen(), 60, "probes to attach")
        pid = wait_for(
            lambda: next((p for p, args in tmux.children() if "vethtrace" in args), None),
            10,
            "the watch process",
        )
        # iperf3 -J writes a lot at the end: into a file, not a pipe nobody reads yet.
        flood_out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed with the run
        flood = subprocess.Popen(
            ["ip", "netns", "exec", a, "iperf3", "-c", SERVER_IP, "-u", "-l", "64", "-b", "0",
             "-t", str(int(seconds)), "-J"],
            stdout=flood_out, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        t0 = time.monotonic()
        rss: list[tuple[float, float]] = []
        screens: list[str] = []
        while flood.poll() is None:
            value = rss_mib(pid)
            if value is not None:
                rss.append((time.monotonic() - t0, value))
            if len(screens) < 3 or int(time.monotonic() - t0) % 60 < 2:
                screens.append(tmux.screen())
            time.sleep(2)
        flood_out.seek(0)
        end = json.loads(flood_out.read())["end"]["sum"]
        traced = {"pps": end["packets"] / end["seconds"], "lost_percent": end["lost_percent"]}
        last_screen = tmux.screen()
        q_sent = time.monotonic()
        tmux.tmux("send-keys", "-t", "w", "q")
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 30, "watch to quit")
        quit_s = time.monotonic() - q_sent
        stats = json.loads(frames_file.read_text())
    finally:
        if tmux is not None:
            tmux.kill()
        server.terminate()
        server.wait()
        frames_file.unlink(missing_ok=True)
        down("bridge-two", prefix)

    frames = stats["frames"]
    durations = [f[1] for f in frames]
    starts = [f[0] for f in frames]
    slowest = sorted(frames, key=lambda f: -f[1])[:5]
    print("slowest frames (start, total, paths):", [[round(x, 3) for x in f] for f in slowest],
          file=sys.stderr)
    intervals = [b - a for a, b in itertools.pairwise(starts)]
    warm = [m for t, m in rss if t >= 10] or [m for _, m in rss]
    slope = 0.0
    if len(rss) >= 2 and rss[-1][0] > 10:
        late = [(t, m) for t, m in rss if t >= 10]
        if len(late) >= 2:
            slope = (late[-1][1] - late[0][1]) / ((late[-1][0] - late[0][0]) / 60)
    header = last_screen.splitlines()[0] if last_screen else ""
    return {
        "seconds": seconds,
        "frames": len(frames),
        "frame_ms_p50": pct(durations, 0.5) * 1000,
        "frame_ms_p99": pct(durations, 0.99) * 1000,
        "frame_ms_max": max(durations) * 1000 if durations else float("nan"),
        "interval_ms_p50": pct(intervals, 0.5) * 1000,
        "interval_ms_p99": pct(intervals, 0.99) * 1000,
        "rss_mib_start": warm[0] if warm else None,
        "rss_mib_end": warm[-1] if warm else None,
        "rss_mib_max": max(m for _, m in rss) if rss else None,
        "rss_mib_per_min": slope,
        # RSS at each full minute (and the end): flat, or still climbing?
        "rss_mib_by_minute": [round(m, 1) for t, m in rss if int(t) % 60 < 2][::1],
        "events": stats["events"],
        "events_per_s": stats["events"] / seconds,
        "lost": stats["lost"],
        "quit_s": quit_s,
        "untraced_pps": baseline["pps"],
        "traced_pps": traced["pps"],
        "header": header.strip(),
    }


def table(r: dict) -> str:  # type: ignore[type-arg]
    rows = [
        ("run", f"{r['seconds']:.0f} s of iperf3 UDP 64 B, `watch udp` at 120x40"),
        ("redraws", f"{r['frames']} (interval p50 {r['interval_ms_p50']:.0f} ms, "
                    f"p99 {r['interval_ms_p99']:.0f} ms; target 200 ms)"),
        ("frame time", f"p50 {r['frame_ms_p50']:.1f} ms, p99 {r['frame_ms_p99']:.1f} ms, "
                       f"max {r['frame_ms_max']:.1f} ms"),
        ("RSS", f"{r['rss_mib_start']:.1f} MiB after 10 s -> {r['rss_mib_end']:.1f} MiB at end "
                f"(max {r['rss_mib_max']:.1f}; slope {r['rss_mib_per_min']:+.2f} MiB/min)"),
        ("RSS by minute", ", ".join(f"{m:.1f}" for m in r["rss_mib_by_minute"]) + " MiB"),
        ("events shown", f"{r['events']:,} ({r['events_per_s']:,.0f}/s)"),
        ("events lost", f"{r['lost']:,} (shown in the header: `{_lost(r['header'])}`)"),
        ("q to exit", f"{r['quit_s']:.2f} s"),
        ("iperf3 pps", f"untraced {r['untraced_pps']:,.0f}, under watch {r['traced_pps']:,.0f} "
                       f"({r['traced_pps'] / r['untraced_pps']:.2f})"),
    ]  # fmt: skip
    out = ["| measure | result |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out)


def _lost(header: str) -> str:
    i = header.find("lost")
    return header[i : i + 20].split("  ")[0] if i >= 0 else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("watch_bench: needs root", file=sys.stderr)
        return 2
    result = measure(args.seconds, f"vtbw{uuid.uuid4().hex[:4]}-")
    print(table(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
