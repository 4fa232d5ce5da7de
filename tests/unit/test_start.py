"""What starting `vethtrace trace` imports (issue #18: start to attached <= 0.1 s
with cached programs). The CLI and the trace command's module must not pull
in what the cached start does not use: bcc (only to compile), scapy and
pyroute2 (not tracing's), rich (only once the probes are attached, or for a
spinner on a terminal), http.client (only to ask a container runtime),
importlib.resources and platform (cheap equivalents are used). Each of them
costs milliseconds to tens of milliseconds at every start.

Checked in a fresh interpreter: this test process has imported much already.
Also: the argument parser built for one subcommand parses as the whole one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vethtrace import cli

NOT_AT_START = (
    "bcc",
    "scapy",
    "pyroute2",
    "rich",
    "http.client",
    "importlib.resources",
    "platform",
)

LOADED = (
    "import json, sys\n"
    "import vethtrace.cli, vethtrace.commands.trace\n"
    "print(json.dumps(sorted(sys.modules)))\n"
)


def test_cli_and_trace_import_nothing_the_cached_start_does_not_use() -> None:
    out = subprocess.run(
        [sys.executable, "-c", LOADED], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(out.stdout))
    assert "vethtrace.collect.bpf" in loaded  # the check looks at the right process
    heavy = [m for m in NOT_AT_START if m in loaded]  # a submodule brings its package
    assert not heavy, f"imported by `vethtrace trace` before it attaches: {heavy}"


ARGVS = [
    ("trace", ["trace", "icmp", "-n", "a", "--json", "--duration", "2"]),
    ("trace", ["--docker-host", "unix:///x.sock", "trace", "arp"]),
    ("topo", ["--docker-host", "trace", "topo", "--json"]),  # a value named as a command
    ("lab", ["lab", "up", "seed"]),
    ("nftrace", ["nftrace", "cleanup", "--all-namespaces"]),
    ("ping", ["ping", "--from", "a", "b", "10.0.0.2", "-c", "2"]),
    ("record", ["--podman-host=x", "record", "--continuous", "/tmp/r", "--max-size", "1G"]),
]


@pytest.mark.parametrize(("command", "argv"), ARGVS, ids=[" ".join(a) for _, a in ARGVS])
def test_the_parser_of_one_subcommand_parses_as_the_whole_one(
    command: str, argv: list[str]
) -> None:
    """cli builds only the subcommand an argument list names (every start pays
    for building all of them otherwise): the same options must come out."""
    assert cli.command_of(argv) == command
    whole = vars(cli.build_parser().parse_args(argv))
    assert vars(cli.build_parser(cli.command_of(argv)).parse_args(argv)) == whole


def test_help_and_unknown_commands_build_every_subcommand() -> None:
    for only in ("", "--help", "trce", "lab up"):
        parser = cli.build_parser(only)
        assert parser.format_help() == cli.build_parser().format_help()
    assert "trace" in cli.build_parser("trace").format_help()
