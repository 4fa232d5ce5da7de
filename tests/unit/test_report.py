"""`vethtrace report` on the real sample recordings, the way a user far from the
incident runs it: not root, without bcc and scapy importable.

Each sample (samples/recordings/NAME.vtrec, made by `vethtrace ping --write` on
kernel 6.18 by samples/recordings/make.py) must reproduce its expected report,
text and JSON. After a deliberate change to what ping/report print, re-make
the expected files with `make.py --expected` and read the diff."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import as_nobody

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "recordings"
RECORDINGS = sorted(p.name.removesuffix(".vtrec") for p in SAMPLES.glob("*.vtrec"))

# bcc and scapy made unimportable (None in sys.modules makes `import` raise),
# then the CLI exactly as the console script calls it.
POISONED_CLI = (
    "import sys\n"
    "for m in ('bcc', 'scapy', 'scapy.all', 'scapy.layers'): sys.modules[m] = None\n"
    "from vethtrace.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "loaded = [m for m in ('bcc', 'scapy') if sys.modules.get(m) is not None]\n"
    "assert not loaded, loaded\n"
    "sys.exit(rc)\n"
)


def report(*args: str, cwd: Path = SAMPLES) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="100", TERM="dumb", PYTHONDONTWRITEBYTECODE="1")
    env.pop("NO_COLOR", None)
    return subprocess.run(
        [*as_nobody(), sys.executable, "-c", POISONED_CLI, "report", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
    )


def test_there_are_samples_of_every_kind() -> None:
    assert {"seed", "seed-fixed"} <= set(RECORDINGS)
    assert len(RECORDINGS) >= 5  # the seed's two stages and the broken labs


@pytest.mark.parametrize("name", RECORDINGS)
def test_report_reproduces_the_expected_text(name: str) -> None:
    out = report(f"{name}.vtrec")
    assert out.returncode in (0, 1), out.stderr
    assert "Traceback" not in out.stderr
    expected = (SAMPLES / f"{name}.expected.txt").read_text()
    assert out.stdout == expected


@pytest.mark.parametrize("name", RECORDINGS)
def test_report_reproduces_the_expected_json(name: str) -> None:
    out = report(f"{name}.vtrec", "--json")
    assert out.returncode in (0, 1), out.stderr
    got = json.loads(out.stdout)
    assert got == json.loads((SAMPLES / f"{name}.expected.json").read_text())
    assert got["recording"]["version"] == 1 and got["recording"]["complete"]


def test_seed_samples_say_what_the_lab_is_known_for() -> None:
    """Not just 'same as last time': the samples carry the seed story."""
    broken = json.loads((SAMPLES / "seed.expected.json").read_text())
    assert broken["verdict"] == "diverted" and not broken["reachable"]
    assert broken["culprit"] == {"netns": "vt-host", "interface": "veth0"}
    assert any("dev br0" in cmd for cmd in broken["fix"])
    fixed = json.loads((SAMPLES / "seed-fixed.expected.json").read_text())
    assert fixed["verdict"] == "delivered" and fixed["reachable"]
    exit_codes = {name: report(f"{name}.vtrec").returncode for name in ("seed", "seed-fixed")}
    assert exit_codes == {"seed": 1, "seed-fixed": 0}


def test_trace_sample_rebuilds_the_diverted_paths() -> None:
    """A `trace --write` recording: report prints trace's lines, then the packet
    paths they make up (the seed's ARP replies diverted to br0) and the findings."""
    out = report("seed-trace.vtrec", "--json")
    got = json.loads(out.stdout)
    diverted = [p for p in got["paths"] if p["outcome"] == "diverted"]
    assert diverted and all(p["kind"] == "arp-reply" for p in diverted)
    devices = [h["interface"] for h in diverted[0]["hops"]]
    chain = [d for i, d in enumerate(devices) if i == 0 or devices[i - 1] != d]
    assert chain == ["veth1", "veth0", "br0"]
    assert any(f["rule"] == "address-on-bridge-port" for f in got["findings"])
    assert all(e["netns_name"] in ("vt-host", "vt-song") for e in got["events"])
    text = report("seed-trace.vtrec").stdout
    assert text.splitlines()[1].split() == ["TIME(s)", "NETNS", "IFACE", "POINT", "WHAT"]


def test_trace_recording_without_topology_still_reports(tmp_path: Path) -> None:
    lines = (SAMPLES / "seed-trace.vtrec").read_text().splitlines(keepends=True)
    (tmp_path / "t.vtrec").write_text("".join(ln for ln in lines if '"type":"topology"' not in ln))
    os.chmod(tmp_path, 0o755)
    out = report("t.vtrec", cwd=tmp_path)
    assert out.returncode in (0, 1), out.stderr
    assert "no topology was recorded" in out.stderr
    assert "ARP reply 192.168.122.102" in out.stdout


def test_truncated_recording_reports_with_a_note(tmp_path: Path) -> None:
    lines = (SAMPLES / "seed.vtrec").read_text().splitlines(keepends=True)
    # The writer was killed while writing the 6th event: half a line, no end record.
    (tmp_path / "cut.vtrec").write_text("".join(lines[:8]) + lines[8][:40])
    os.chmod(tmp_path, 0o755)
    out = report("cut.vtrec", cwd=tmp_path)
    assert out.returncode in (0, 1), out.stderr
    assert "last line (9) is truncated" in out.stderr
    assert "no end record" in out.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("garbage\n", "not a vethtrace recording (header line is not JSON)"),
        ('{"format": "vethtrace-recording", "version": 7}\n', "format version 7"),
        (None, "line 5 is corrupt"),
    ],
)
def test_broken_recordings_give_one_clear_line(
    tmp_path: Path, content: str | None, message: str
) -> None:
    if content is None:  # a sample with one line in the middle garbled
        lines = (SAMPLES / "seed.vtrec").read_text().splitlines(keepends=True)
        lines[4] = lines[4][: len(lines[4]) // 2] + "\n"
        content = "".join(lines)
    (tmp_path / "bad.vtrec").write_text(content)
    os.chmod(tmp_path, 0o755)
    out = report("bad.vtrec", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    assert out.stderr.startswith("vethtrace report: bad.vtrec")


def test_missing_file_is_one_clear_line() -> None:
    out = report("no-such.vtrec")
    assert out.returncode == 2 and out.stderr == "vethtrace report: no-such.vtrec: no such file\n"


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_sample_pcapng_names_interface_and_namespace_per_packet() -> None:
    out = subprocess.run(
        ["tshark", "-r", str(SAMPLES / "seed.pcapng"), "-T", "fields",
         "-e", "frame.interface_name", "-e", "frame.interface_description", "-e", "arp.opcode"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert rows and all(r[0] and "/" in r[0] for r in rows)  # "netns/ifname" on every packet
    replies = {r[0] for r in rows if r[2] == "2"}
    # The ARP reply was sniffed on song's veth1, the host's veth0 (tcpdump shows it)...
    assert {"vt-song/veth1", "vt-host/veth0"} <= replies
    assert all("in netns" in r[1] for r in rows)
    # ...and the header points at this very file, relative to the recording.
    header = json.loads((SAMPLES / "seed.vtrec").read_text().splitlines()[0])
    assert header["pcap"] == "seed.pcapng"
