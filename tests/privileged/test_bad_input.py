"""Bad input, across every command: one clear line on stderr, exit status 2,
never a traceback, nothing on stdout. Each row is what a person (or a script)
could type; `{host}`/`{song}` are the seed lab's namespaces (this run's
prefix), `{dir}` a scratch directory holding malformed recordings."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.labs import built_lab

pytestmark = pytest.mark.privileged

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "recordings"
PING = ["ping", "--from", "{host}", "{song}"]
SONG_IP = "192.168.122.102"

CASES: list[tuple[list[str], str]] = [
    # no command, unknown command, unknown option
    ([], "required: COMMAND"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["--bogus", "doctor"], "unrecognized arguments: --bogus"),
    # topo
    (["topo", "-n", "vtt-no-such-ns"], "vtt-no-such-ns"),
    (["topo", "--json", "--dot"], "not allowed with argument"),
    (["topo", "--svg", "/nonexistent-dir/x.svg", "-n", "{host}"], "cannot write /nonexistent-dir"),
    (["topo", "extra"], "unrecognized arguments: extra"),
    # check
    (["check", "-n", "vtt-no-such-ns"], "vtt-no-such-ns"),
    (["check", "-n", "pid:999999999"], "999999999"),
    (["check", "--json", "extra"], "unrecognized arguments"),
    # ping: arguments
    (["ping"], "required"),
    (["ping", "{song}"], "required: IP"),
    ([*PING, SONG_IP, "-c", "0"], "--count: 0 is out of range"),
    ([*PING, SONG_IP, "-c", "-1"], "--count: -1 is out of range"),
    ([*PING, SONG_IP, "-c", "nan"], "'nan' is not an integer"),
    ([*PING, SONG_IP, "-c", "1.5"], "'1.5' is not an integer"),
    ([*PING, SONG_IP, "-c", "100001"], "--count: 100001 is out of range"),
    ([*PING, SONG_IP, "--timeout", "nan"], "'nan' is not a finite number"),
    ([*PING, SONG_IP, "--timeout", "inf"], "'inf' is not a finite number"),
    ([*PING, SONG_IP, "--timeout=-inf"], "'-inf' is not a finite number"),
    ([*PING, SONG_IP, "--timeout", "0"], "--timeout: 0 is out of range"),
    ([*PING, SONG_IP, "--timeout", "-1"], "--timeout: -1 is out of range"),
    ([*PING, SONG_IP, "--timeout", "601"], "--timeout: 601 is out of range"),
    ([*PING, SONG_IP, "--timeout", "soon"], "'soon' is not a number"),
    ([*PING, SONG_IP, "-s", "-1"], "--size: -1 is out of range"),
    ([*PING, SONG_IP, "-s", "65508"], "--size: 65508 is out of range"),
    ([*PING, SONG_IP, "-s", "nan"], "'nan' is not an integer"),
    ([*PING, "192.168.122.300"], "is not an IP address"),
    ([*PING, "fe80::1"], "only IPv4"),
    (["ping", "vtt-no-such-ns", SONG_IP], "no network namespace named 'vtt-no-such-ns'"),
    (["ping", "--from", "vtt-no-such-src", "{song}", SONG_IP], "vtt-no-such-src"),
    # ping: targets that are not one namespace's unicast address
    ([*PING, "0.0.0.0"], "unspecified address"),
    ([*PING, "255.255.255.255"], "limited broadcast"),
    ([*PING, "224.0.0.1"], "multicast"),
    ([*PING, "239.255.255.250"], "multicast"),
    ([*PING, "192.168.122.255"], "broadcast address of a subnet connected in {host}"),
    ([*PING, "127.0.0.1"], "loopback"),
    # ping: where the evidence cannot be written
    ([*PING, SONG_IP, "--write", "/nonexistent-dir/x.vtrec"], "cannot write"),
    ([*PING, SONG_IP, "--pcap", "/nonexistent-dir/x.pcapng"], "cannot write"),
    # path
    (["path"], "required"),
    (["path", "not-an-ip"], "is not an IP address"),
    (["path", "{song}"], "is not an IP address"),
    (["path", "--from", "{host}", "{song}", SONG_IP, "--port", "0"], "--port: 0 is out of range"),
    (["path", "--from", "{host}", "{song}", SONG_IP, "--port", "65536"], "65536 is out of range"),
    (["path", "--from", "{host}", "{song}", SONG_IP, "--port", "http"], "'http' is not an integer"),
    (["path", "--from", "{host}", "{song}", SONG_IP, "--port", "-1"], "-1 is out of range"),
    (["path", "--from", "{host}", "{song}", SONG_IP, "--proto", "tcp"], "needs --port"),
    (["path", "--from", "{host}", "{song}", SONG_IP, "--port", "80"], "makes no sense"),
    (["path", "--from", "{host}", "{song}", SONG_IP, "--proto", "sctp"], "invalid choice: 'sctp'"),
    (["path", "vtt-no-such-ns", SONG_IP], "vtt-no-such-ns"),
    (["path", "--from", "{host}", "203.0.113.77"], "no namespace holds 203.0.113.77"),
    # trace
    (["trace", "--duration", "nan"], "'nan' is not a finite number"),
    (["trace", "--duration", "inf"], "'inf' is not a finite number"),
    (["trace", "--duration", "0"], "--duration: 0 is out of range"),
    (["trace", "--duration", "-5"], "--duration: -5 is out of range"),
    (["trace", "--duration", "ten"], "'ten' is not a number"),
    (["trace", "bogus", "filter"], "bogus"),
    (["trace", "port", "99999"], "99999"),
    (["trace", "-n", "vtt-no-such-ns"], "vtt-no-such-ns"),
    # watch
    (["watch", "--duration", "nan"], "'nan' is not a finite number"),
    (["watch", "--duration", "-1"], "--duration: -1 is out of range"),
    (["watch", "tcp", "port", "x"], "port"),
    # report
    (["report"], "required: FILE"),
    (["report", "/nonexistent-dir/x.vtrec"], "no such file"),
    (["report", "{dir}"], "is a directory"),
    (["report", "{dir}", "--since", "yesterday"], "--since 'yesterday': expected"),
    (["report", "{dir}/empty.vtrec", "--since", "10m"], "apply to a recorder's directory"),
    (["record"], "use `record --continuous [DIR]`"),
    (["record", "--continuous", "{dir}/rec", "--max-size", "lots"], "--max-size 'lots'"),
    (["record", "--continuous", "{dir}/rec", "--max-age", "forever"], "--max-age 'forever'"),
    (["report", "{dir}/empty.vtrec"], "empty file"),
    (["report", "{dir}/garbage.vtrec"], "not a vethtrace recording"),
    (["report", "{dir}/version9.vtrec"], "format version 9"),
    (["report", "{dir}/ts-string.vtrec"], "ts_ns: expected an integer"),
    (["report", "{dir}/lost-string.vtrec"], "lost: expected a count"),
    (["report", "{dir}/count-string.vtrec"], "ping.count"),
    (["report", "{dir}/corrupt-middle.vtrec"], "is corrupt"),
    # lab
    (["lab"], "required: ACTION"),
    (["lab", "frobnicate"], "invalid choice: 'frobnicate'"),
    (["lab", "up"], "required: NAME"),
    (["lab", "up", "no-such-scenario"], "no-such-scenario"),
    (["lab", "show", "no-such-scenario"], "no-such-scenario"),
    (["lab", "down", "no-such-lab"], "lab no-such-lab is not up"),
    # doctor
    (["doctor", "--bogus"], "unrecognized arguments: --bogus"),
]


def _edit(name: str, fn: Callable[[list[dict]], None], into: Path) -> None:
    """A copy of the seed sample with its JSON lines edited by `fn`."""
    objs = [json.loads(line) for line in (SAMPLES / "seed.vtrec").read_text().splitlines()]
    fn(objs)
    (into / name).write_text("".join(json.dumps(o) + "\n" for o in objs))


def _first(objs: list[dict], kind: str) -> dict:
    return next(o for o in objs if o.get("type") == kind)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.vtrec").write_text("")
    (d / "garbage.vtrec").write_text("garbage\n")
    _edit("version9.vtrec", lambda o: o[0].update(version=9), d)
    _edit("ts-string.vtrec", lambda o: _first(o, "event")["data"].update(ts_ns="12"), d)
    _edit("lost-string.vtrec", lambda o: _first(o, "end")["data"].update(lost="some"), d)
    _edit("count-string.vtrec", lambda o: o[0]["ping"].update(count="3"), d)
    lines = (SAMPLES / "seed.vtrec").read_text().splitlines(keepends=True)
    (d / "corrupt-middle.vtrec").write_text("".join(lines[:5]) + "{not json\n" + "".join(lines[5:]))
    return d


@pytest.fixture(scope="module")
def seed() -> Iterator:
    with built_lab("seed") as lab:
        yield lab


@pytest.mark.parametrize(("args", "fragment"), CASES, ids=[" ".join(a) or "-" for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(args, fragment, seed, scratch, cli) -> None:
    names = {"host": seed.ns("host"), "song": seed.ns("song"), "dir": str(scratch)}
    argv = [a.format(**names) for a in args]
    res = cli(*argv, timeout=60)
    assert res.returncode == 2, (argv, res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, (argv, res.stderr)
    assert fragment.format(**names) in lines[0], (argv, lines[0])
    assert res.stdout == ""


def test_the_table_covers_every_command() -> None:
    assert len(CASES) >= 60
    commands = {a[0] for a, _ in CASES if a}
    assert commands >= {"topo", "check", "ping", "path", "trace", "watch", "report", "lab",
                        "doctor"}  # fmt: skip
