"""Argument parsing only: each subcommand maps to `vethtrace.commands.<name>.run(**options)`.

Nothing below this module sees argparse; commands take plain keyword arguments,
which keeps them callable from tests and from each other (ping reuses check).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence

from vethtrace import __version__
from vethtrace.errors import ExitStatus, UserError

EPILOG = """\
examples:
  vethtrace doctor                        what this kernel lets vethtrace see
  vethtrace lab up seed                   build the classic broken bridge-port lab
  vethtrace topo                          namespaces, bridges, veth pairs at a glance
  vethtrace check                         what is wrong, why, and the commands that fix it
  vethtrace ping --from vt-host vt-song 192.168.122.102
                                          one verdict: where the frame went and why
  vethtrace path --from vt-host vt-song 192.168.122.102
                                          the kernel's decisions, hop by hop, without a packet
  vethtrace trace arp -n vt-song          every kernel event for ARP in one namespace
  vethtrace watch icmp                    live packet paths over the topology
  vethtrace report incident.vtrec         offline report from a recording (no root)
  vethtrace record --continuous /var/lib/vethtrace/recorder --max-size 1G --max-age 7d
                                          the flight recorder: drops and topology changes
  vethtrace report /var/lib/vethtrace/recorder --since 10m
                                          what happened, changes interleaved with drops
"""


def _netns_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-n",
        "--netns",
        action="append",
        default=[],
        metavar="NETNS",
        help="limit to this namespace (repeatable; 'root' is the initial one)",
    )


def _tracing_opts(p: argparse.ArgumentParser) -> None:
    """What trace and watch both take: a filter, namespaces, a duration."""
    p.add_argument("filter", nargs="*", metavar="FILTER", help="pcap-filter expression")
    _netns_opt(p)
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")


def _json_opt(p: argparse._ActionsContainer, help: str = "") -> None:
    """--json, passed to commands as `as_json` (so `json` stays the module's name)."""
    p.add_argument("--json", dest="as_json", action="store_true", help=help or None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vethtrace",
        description="Find where packets go missing across veth pairs, bridges and namespaces.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vethtrace {__version__}")
    for runtime, env in (("docker", "DOCKER_HOST"), ("podman", "CONTAINER_HOST")):
        parser.add_argument(
            f"--{runtime}-host", metavar="URL", help=f"{runtime}'s API socket (default ${env})"
        )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("topo", help="show the veth/bridge/netns topology")
    out = p.add_mutually_exclusive_group()
    _json_opt(out, "the complete model as JSON (snapshot)")
    out.add_argument("--dot", action="store_true", help="Graphviz DOT on stdout")
    out.add_argument("--svg", metavar="FILE", help="render an SVG with Graphviz")
    _netns_opt(p)

    p = sub.add_parser("check", help="find misconfigurations; exit 0 clean, 1 findings, 2 error")
    _json_opt(p, 'print {"findings": [...]}')
    _netns_opt(p)

    p = sub.add_parser("ping", help="ping IP in NETNS and explain where the frames went")
    p.add_argument("--from", dest="source", metavar="NETNS", help="send from here (default root)")
    p.add_argument("target_netns", metavar="NETNS", help="namespace that should own IP")
    p.add_argument("ip", metavar="IP", help="address to reach")
    p.add_argument("-c", "--count", type=int, default=3, help="echo requests (default 3)")
    p.add_argument("--timeout", type=float, default=5.0, help="give up after S seconds")
    p.add_argument(
        "-s", "--size", type=int, default=56, help="echo payload bytes, as ping -s (default 56)"
    )
    _json_opt(p, "verdict, path and findings as JSON")
    p.add_argument("--write", metavar="FILE", help="write a recording of this run")
    p.add_argument("--pcap", metavar="FILE", help="write sniffed frames as pcapng")

    p = sub.add_parser("path", help="predict a packet's path from the kernel's tables (no packet)")
    p.add_argument("--from", dest="source", metavar="NETNS", help="send from here (default root)")
    p.add_argument("target", metavar="NETNS|IP", help="namespace holding DEST, or the address")
    p.add_argument("dest", metavar="DEST", nargs="?", help="address to reach (with NETNS)")
    p.add_argument("--proto", choices=["icmp", "tcp", "udp", "arp"], default="icmp")
    p.add_argument("--port", type=int, help="destination port (tcp/udp)")
    _json_opt(p, "both paths as JSON")

    p = sub.add_parser("trace", help="stream kernel packet events")
    _tracing_opts(p)
    _json_opt(p, "one JSON object per event")
    p.add_argument("--write", metavar="FILE", help="write a recording")
    p.add_argument("--pcap", metavar="FILE", help="write sniffed frames as pcapng")

    p = sub.add_parser("watch", help="live terminal UI of packet paths")
    _tracing_opts(p)

    p = sub.add_parser("record", help="the flight recorder: drops and topology changes, always on")
    p.add_argument("--continuous", action="store_true", help="run until stopped (SIGTERM)")
    p.add_argument("directory", metavar="DIR", nargs="?", help="recording directory "
                   "(default /var/lib/vethtrace/recorder)")
    p.add_argument("--max-size", default="256M", metavar="SIZE", help="keep at most SIZE (256M)")
    p.add_argument("--max-age", metavar="AGE", help="delete what is older than AGE (e.g. 7d)")
    p.add_argument("--min-free", metavar="SIZE", help="leave SIZE free on the disk "
                   "(default 5%% of it, at most 1G)")
    p.add_argument("--segment-size", metavar="SIZE", help="rotate at SIZE (max-size/8)")
    p.add_argument("--no-drops", action="store_true", help="topology changes only, no BPF")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")

    p = sub.add_parser("report", help="offline report from a recording (no root needed)")
    p.add_argument("file", metavar="FILE|DIR")
    _json_opt(p)
    p.add_argument("--since", metavar="T", help="DIR: from T (10m ago, 14:02, ISO time)")
    p.add_argument("--until", metavar="T", help="DIR: up to T (default now)")
    p.add_argument("--at", metavar="T", help="DIR: run check on the topology as it was at T")
    _netns_opt(p)

    p = sub.add_parser("lab", help="build known topologies, good and broken")
    lab = p.add_subparsers(dest="action", metavar="ACTION")
    lab.required = True
    lab.add_parser("list", help="list scenarios")
    for action, helptext in (("up", "build a scenario"), ("show", "describe a scenario")):
        q = lab.add_parser(action, help=helptext)
        q.add_argument("name", metavar="NAME")
    q = lab.add_parser("down", help="remove a scenario (all built ones without NAME)")
    q.add_argument("name", metavar="NAME", nargs="?")

    p = sub.add_parser("doctor", help="what this machine lets vethtrace see")
    _json_opt(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = vars(args)
    command = options.pop("command")
    for runtime, env in (("docker", "DOCKER_HOST"), ("podman", "CONTAINER_HOST")):
        url = options.pop(f"{runtime}_host")
        if url:  # read where the runtimes are asked (vethtrace.topology.runtimes.api)
            os.environ[env] = url if "://" in url else f"unix://{url}"
    try:
        module = importlib.import_module(f"vethtrace.commands.{command}")
        return int(module.run(**options))
    except UserError as exc:
        print(f"vethtrace {command}: {exc}", file=sys.stderr)
        return int(exc.status)
    except KeyboardInterrupt:
        print(f"vethtrace {command}: interrupted", file=sys.stderr)
        return int(ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        # `vethtrace trace | head`: stop quietly, like other Unix tools.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        return int(ExitStatus.OK)


if __name__ == "__main__":
    sys.exit(main())
