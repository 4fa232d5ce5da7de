"""Argument parsing only: each subcommand maps to `vethtrace.commands.<name>.run(**options)`.

Nothing below this module sees argparse; commands take plain keyword arguments,
which keeps them callable from tests and from each other (ping reuses check).

Every number a user types is checked here, at parsing (the validators
section): finite, in range, one line on stderr and exit 2 — so no command
ever receives `nan`, `inf` or a negative count. Signals are set up here too
(vethtrace/signals.py): SIGINT and SIGTERM interrupt alike.

Over 400 lines: one parser for every subcommand, with the examples each
--help ends with and the validators they share; split by command, the shared
option helpers would be imported back and forth.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, cast

from vethtrace import __version__
from vethtrace import signals as sigs
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

FILTER_HELP = """\
FILTER is pcap-filter syntax (as tcpdump), evaluated in the kernel; the subset
vethtrace supports: arp, ip, icmp, tcp, udp; [src|dst] host A (ARP sender and
target too); [src|dst] net A/N; [src|dst] port N; a bare address (= host);
protocol qualifiers (tcp port 80); value lists (port 80 or 443); and/&&, or/||,
not/!, parentheses. Anything else is an error naming the unsupported part.
Neighbour events match as ARP about their address. A VXLAN datagram (UDP port
4789) matches when its outer headers OR the frame it carries match, so a
pod's ping is followed through the tunnel."""

# Per subcommand: examples shown at the end of its --help (as the top-level one).
EXAMPLES = {
    "topo": """\
  vethtrace topo                          every namespace as a tree
  vethtrace topo -n vt-host -n vt-song    two namespaces (and their veth peers)
  vethtrace topo --json > topo.json       the complete model (a snapshot)
  vethtrace topo --svg topo.svg           a picture (needs Graphviz)""",
    "check": """\
  vethtrace check                         every namespace; exit 1 when something is wrong
  vethtrace check -n vt-host              findings about one namespace
  vethtrace check --json | jq '.findings[].rule'""",
    "ping": """\
  vethtrace ping --from vt-host vt-song 192.168.122.102
  vethtrace ping vt-song 192.168.122.102 -c 1 --timeout 2   from the root namespace
  vethtrace ping --from vt-host vt-song 192.168.122.102 --write incident.vtrec \\
                 --pcap incident.pcapng   keep the evidence (read it with `report`)
  vethtrace ping --from vt-a vt-b 10.0.4.2 --nftrace   name the firewall rule that drops it
  vethtrace ping --agents http://10.0.0.1:7411,http://10.0.0.2:7411 --token-file token \\
                 --from node-a/pod-a node-b/pod-b 10.244.1.2   across nodes (docs/agent.md)""",
    "path": """\
  vethtrace path --from vt-host vt-song 192.168.122.102
  vethtrace path --from vt-a 10.0.0.2 --proto tcp --port 80   the namespace holding it is found
  vethtrace path --from vt-a vt-b 10.0.0.2 --json""",
    "trace": """\
  vethtrace trace arp -n vt-host -n vt-song   ARP and neighbour events in two namespaces
  vethtrace trace 'icmp and host 10.0.0.2' --json   one JSON object per event
  vethtrace trace --duration 10 --write run.vtrec   a recording for `vethtrace report`
  vethtrace trace icmp -n vt-sw --nftrace   rule verdicts of the kernel's nftables trace too""",
    "watch": """\
  vethtrace watch                         every namespace's packet paths, live
  vethtrace watch icmp -n vt-host         only ICMP, only one namespace
  vethtrace watch icmp --nftrace          with the firewall rule verdicts under each path""",
    "agent": """\
  vethtrace agent --listen 10.0.0.5:7411 --token-file /etc/vethtrace/token
  vethtrace agent --listen 127.0.0.1:7411 --token-file token -n vt-host -n vt-song
  vethtrace agent --listen 0.0.0.0:7411 --token-file token   every address (said explicitly)""",
    "report": """\
  vethtrace report incident.vtrec         as the live command printed it (any user)
  vethtrace report incident.vtrec --json  the same as JSON
  vethtrace report /var/lib/vethtrace/recorder --since 10m
                                          a flight recorder's changes and drops, in order
  vethtrace report /var/lib/vethtrace/recorder --since 1h --at 14:02:30 -n vt-host
                                          ... and check on the topology as it was then""",
    "record": """\
  vethtrace record --continuous           record to /var/lib/vethtrace/recorder until SIGTERM
  vethtrace record --continuous /srv/rec --max-size 1G --max-age 7d --min-free 2G""",
    "lab": """\
  vethtrace lab list                      the scenarios, broken and working
  vethtrace lab show seed                 what it builds and what it shows
  vethtrace lab up seed                   build it (namespaces vt-host, vt-song)
  vethtrace lab down                      remove every lab that is up""",
    "lab up": """\
  vethtrace lab up seed                   a shipped scenario, by name
  vethtrace lab up ./my-lab.toml          a scenario file of your own
  VETHTRACE_LAB_PREFIX=me- vethtrace lab up seed   namespaces me-host, me-song""",
    "lab show": """\
  vethtrace lab show seed""",
    "lab down": """\
  vethtrace lab down seed                 remove one lab
  vethtrace lab down                      remove every lab built with this prefix""",
    "lab list": """\
  vethtrace lab list | grep broken""",
    "nftrace": """\
  vethtrace nftrace cleanup               tables of killed --nftrace runs, where recorded
  vethtrace nftrace cleanup --all-namespaces   look in every namespace""",
    "doctor": """\
  vethtrace doctor                        the checks and the probe plan, as a table
  vethtrace doctor --json | jq .tracing_possible
  vethtrace doctor --prepare              compile the probe sets into the cache (set-up)""",
}

LAB_UP_HELP = """\
Build a scenario in network namespaces named <prefix><name> (prefix vt-, or
VETHTRACE_LAB_PREFIX) and print what was built. Nothing is created in the root
namespace. Interrupted (Ctrl-C or SIGTERM) before the lab is complete, `up`
rolls back everything it built and exits 130 (SIGTERM: 143); once the lab is
complete it stays up, is printed, and `up` exits 0 even if a signal arrives
then (`lab down NAME` removes it). Up of a lab that is up changes nothing."""


AGENT_HELP = """\
Serve this node's discovery (topo --json), checks (check --json) and kernel
events (trace --json lines) over HTTP to `vethtrace ping --agents`. Read-only;
every request needs `Authorization: Bearer TOKEN`; listens only on --listen.
With -n, only those namespaces are served. SIGINT/SIGTERM stop it, detached."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block): `vethtrace ping:
    argument -c/--count: ... (see --help)`, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(int(ExitStatus.ERROR), f"{self.prog}: {message} (see --help)\n")


# --- validators: every numeric option, checked at parsing ---------------------------


def _number(
    kind: type[int] | type[float], low: float, high: float, low_open: bool = False
) -> Callable[[str], int | float]:
    """An argparse type: a finite `kind` in [low, high] (low excluded if low_open)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        too_low = value <= low if low_open else value < low
        if too_low or value > high:
            lo = f"more than {low:g}" if low_open else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range ({lo}, at most {high:g})")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


COUNT = _number(int, 1, 100_000)
TIMEOUT_S = _number(float, 0, 600, low_open=True)
SIZE = _number(int, 0, 65_507)  # the largest ICMP payload in an IPv4 packet
PORT = _number(int, 1, 65_535)
DURATION_S = _number(float, 0, 7 * 86_400, low_open=True)
BUFFER_KIB = _number(int, 4, 1_048_576)  # a power of two: checked by trace.ring_pages_of


# --- options shared by several subcommands -------------------------------------------


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
    p.add_argument(
        "filter", nargs="*", metavar="FILTER", help="pcap-filter expression (see below)"
    )
    _netns_opt(p)
    p.add_argument(
        "--duration", type=DURATION_S, metavar="S", help="stop after S seconds (default: Ctrl-C)"
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="keep running when every namespace of -n is gone (default: say so and exit 1)",
    )
    p.add_argument(
        "--buffer",
        type=BUFFER_KIB,
        metavar="KIB",
        help="kernel ring buffer size in KiB, a power of two (default 8192)",
    )


def _nftrace_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nftrace",
        action="store_true",
        help="name the nftables/iptables rule behind each verdict (adds a table of its own "
        "per namespace while it runs; `vethtrace nftrace cleanup` after a crash)",
    )


def _json_opt(p: argparse._ActionsContainer, help: str = "") -> None:
    """--json, passed to commands as `as_json` (so `json` stays the module's name)."""
    p.add_argument("--json", dest="as_json", action="store_true", help=help or None)


def _sub(
    sub: argparse._SubParsersAction,
    name: str,
    help: str,
    description: str = "",
    parent: str = "",
) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with its examples (EXAMPLES["parent name"])."""
    key = f"{parent} {name}".strip()
    if _ONLY[0] and not parent and name != _ONLY[0]:
        return cast(argparse.ArgumentParser, _Unused())
    extra = f"\n\n{FILTER_HELP}" if key in ("trace", "watch") else ""
    return sub.add_parser(
        name,
        help=help,
        description=description or help[0].upper() + help[1:] + ".",
        epilog=f"examples:\n{EXAMPLES[key]}{extra}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


class _Unused:
    """Takes the place of the parser of a subcommand this run does not parse:
    every add_argument and the like is a no-op returning itself."""

    def __getattr__(self, name: str) -> Callable[..., _Unused]:
        return lambda *_a, **_k: self


# The one subcommand build_parser builds in full ("": every one), see build_parser.
_ONLY = [""]
GLOBAL_VALUED = ("--docker-host", "--podman-host")  # top-level options taking a value


def command_of(argv: Sequence[str]) -> str:
    """The subcommand an argument list names ("" if none): the first argument
    that is neither an option nor the value of a top-level option."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in GLOBAL_VALUED:
            skip = True
        elif arg[:1] != "-":
            return arg
    return ""


def build_parser(only: str = "") -> argparse.ArgumentParser:
    """The parser; with `only` (a subcommand's name, see command_of) the other
    subcommands are left out: building every one costs ~5 ms of each start
    (issue #18), and the one named is all an argument list naming it can reach.
    Any other value builds them all (--help, a misspelt command)."""
    _ONLY[0] = only if only in EXAMPLES and " " not in only else ""  # "lab up": a nested one
    try:
        return _build_parser()
    finally:
        _ONLY[0] = ""


def _build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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

    p = _sub(sub, "topo", "show the veth/bridge/netns topology")
    out = p.add_mutually_exclusive_group()
    _json_opt(out, "the complete model as JSON (snapshot)")
    out.add_argument("--dot", action="store_true", help="Graphviz DOT on stdout")
    out.add_argument("--svg", metavar="FILE", help="render an SVG with Graphviz")
    _netns_opt(p)

    p = _sub(sub, "check", "find misconfigurations; exit 0 clean, 1 findings, 2 error")
    _json_opt(p, 'print {"findings": [...]}')
    _netns_opt(p)

    p = _sub(sub, "ping", "ping IP in NETNS and explain where the frames went")
    p.add_argument("--from", dest="source", metavar="NETNS", help="send from here (default root)")
    p.add_argument("target_netns", metavar="NETNS", help="namespace that should own IP")
    p.add_argument("ip", metavar="IP", help="unicast IPv4 address to reach")
    p.add_argument("-c", "--count", type=COUNT, default=3, metavar="N",
                   help="echo requests (default 3)")  # fmt: skip
    p.add_argument("--timeout", type=TIMEOUT_S, default=5.0, metavar="S",
                   help="give up after S seconds (default 5, at most 600)")  # fmt: skip
    p.add_argument("-s", "--size", type=SIZE, default=56, metavar="BYTES",
                   help="echo payload bytes, as ping -s (default 56, at most 65507)")  # fmt: skip
    _json_opt(p, "verdict, path and findings as JSON")
    p.add_argument("--write", metavar="FILE", help="write a recording of this run")
    p.add_argument("--pcap", metavar="FILE", help="write sniffed frames as pcapng")
    _nftrace_opt(p)
    p.add_argument("--agents", metavar="URL[,URL...]",
                   help="ask these nodes' agents (`vethtrace agent`); names are NODE/NETNS")
    p.add_argument("--token-file", metavar="FILE", help="the agents' bearer token (--agents)")

    p = _sub(sub, "path", "predict a packet's path from the kernel's tables (no packet)")
    p.add_argument("--from", dest="source", metavar="NETNS", help="send from here (default root)")
    p.add_argument("target", metavar="NETNS|IP", help="namespace holding DEST, or the address")
    p.add_argument("dest", metavar="DEST", nargs="?", help="address to reach (with NETNS)")
    p.add_argument("--proto", choices=["icmp", "tcp", "udp", "arp"], default="icmp",
                   help="the packet's protocol (default icmp)")  # fmt: skip
    p.add_argument("--port", type=PORT, metavar="N", help="destination port (tcp/udp, 1-65535)")
    _json_opt(p, "both paths as JSON")

    p = _sub(sub, "trace", "stream kernel packet events")
    _tracing_opts(p)
    _json_opt(p, "one JSON object per event")
    p.add_argument("--write", metavar="FILE", help="write a recording")
    p.add_argument(
        "--pcap", metavar="FILE", help="write every matching frame in scope as pcapng"
    )
    _nftrace_opt(p)

    p = _sub(sub, "watch", "live terminal UI of packet paths")
    _tracing_opts(p)
    _nftrace_opt(p)

    p = _sub(sub, "agent", "serve this node's topology, checks and events over HTTP",
             AGENT_HELP)  # fmt: skip
    p.add_argument("--listen", required=True, metavar="ADDR:PORT",
                   help="where to listen (0.0.0.0:PORT for every address, said explicitly)")
    p.add_argument("--token-file", required=True, metavar="FILE",
                   help="file holding the bearer token clients must send")  # fmt: skip
    _netns_opt(p)
    p.add_argument("--node", metavar="NAME", help="this node's name (default $NODE_NAME, hostname)")
    p.add_argument("--listen-netns", metavar="NETNS",
                   help="open the listening socket inside this namespace")  # fmt: skip
    p.add_argument("--no-ping", action="store_true",
                   help="refuse POST /v1/ping (then this node cannot be a ping's source)")

    p = _sub(sub, "record", "the flight recorder: drops and topology changes, always on")
    p.add_argument("--continuous", action="store_true", help="run until stopped (SIGTERM)")
    p.add_argument("directory", metavar="DIR", nargs="?", help="recording directory "
                   "(default /var/lib/vethtrace/recorder)")  # fmt: skip
    p.add_argument("--max-size", default="256M", metavar="SIZE", help="keep at most SIZE (256M)")
    p.add_argument("--max-age", metavar="AGE", help="delete what is older than AGE (e.g. 7d)")
    p.add_argument("--min-free", metavar="SIZE", help="leave SIZE free on the disk "
                   "(default 5%% of it, at most 1G)")  # fmt: skip
    p.add_argument("--segment-size", metavar="SIZE", help="rotate at SIZE (max-size/8)")
    p.add_argument("--no-drops", action="store_true", help="topology changes only, no BPF")
    p.add_argument("--duration", type=DURATION_S, metavar="S", help="stop after S seconds")

    p = _sub(sub, "report", "offline report from a recording (no root needed)")
    p.add_argument(
        "file", metavar="FILE|DIR",
        help="a recording written by `ping --write` or `trace --write` (*.vtrec), "
             "or a flight recorder's directory",
    )  # fmt: skip
    _json_opt(p, "the report as JSON")
    p.add_argument("--since", metavar="T", help="DIR: from T (10m ago, 14:02, ISO time)")
    p.add_argument("--until", metavar="T", help="DIR: up to T (default now)")
    p.add_argument("--at", metavar="T", help="DIR: run check on the topology as it was at T")
    _netns_opt(p)

    p = _sub(sub, "lab", "build known topologies, good and broken")
    lab = p.add_subparsers(dest="action", metavar="ACTION")
    lab.required = True
    _sub(lab, "list", "list scenarios", parent="lab")
    q = _sub(lab, "up", "build a scenario", LAB_UP_HELP, parent="lab")
    q.add_argument("name", metavar="NAME",
                   help="a scenario name from `lab list`, or a scenario .toml file")  # fmt: skip
    q = _sub(lab, "show", "describe a scenario", parent="lab")
    q.add_argument("name", metavar="NAME", help="a scenario name from `lab list`, or a .toml file")
    q = _sub(lab, "down", "remove a scenario (all built ones without NAME)", parent="lab")
    q.add_argument("name", metavar="NAME", nargs="?", help="the lab to remove (default: all)")

    p = _sub(sub, "nftrace", "undo what a killed --nftrace run left in firewalls")
    act = p.add_subparsers(dest="action", metavar="ACTION")
    act.required = True
    q = act.add_parser("cleanup", help="delete tables of --nftrace runs that are gone")
    q.add_argument(
        "--all-namespaces",
        dest="everywhere",
        action="store_true",
        help="look in every /run/netns namespace and the initial one, not only recorded ones",
    )

    p = _sub(sub, "doctor", "what this machine lets vethtrace see")
    _json_opt(p, "the checks and the probe plan as JSON")
    p.add_argument(
        "--prepare",
        action="store_true",
        help="only compile the probe sets the commands use into the cache (set-up runs it)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command. With argv=None this process *is* the command: once its
    result is known, late signals are ignored (the exit status stays the
    command's). Called with argv (tests), signal handlers are put back."""
    command = next((a for a in (sys.argv[1:] if argv is None else argv) if a[:1] != "-"), "")
    restore: Callable[[], None] | None = None
    try:
        restore = sigs.install(command)  # inside the try: a signal may land at once
        args = build_parser(command_of(sys.argv[1:] if argv is None else argv)).parse_args(argv)
        options = vars(args)
        command = options.pop("command")
        for runtime, env in (("docker", "DOCKER_HOST"), ("podman", "CONTAINER_HOST")):
            url = options.pop(f"{runtime}_host")
            if url:  # read where the runtimes are asked (vethtrace.topology.runtimes.api)
                os.environ[env] = url if "://" in url else f"unix://{url}"
        module = importlib.import_module(f"vethtrace.commands.{command}")
        return int(module.run(**options))
    except UserError as exc:
        print(f"vethtrace {command}: {exc}", file=sys.stderr)
        return int(exc.status)
    except sigs.Interrupted as exc:
        sigs.announce()
        return exc.status
    except KeyboardInterrupt:
        sigs.announce()
        return int(ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        # `vethtrace trace | head`: stop quietly, like other Unix tools.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        return int(ExitStatus.OK)
    except Exception as exc:
        # A signal landing inside an import or a descriptor hook comes back wrapped
        # (e.g. RuntimeError from __set_name__): still an interruption, not a bug.
        cause = sigs.interruption_in(exc)
        if cause is None:
            raise
        sigs.announce()
        return cause.status
    finally:
        if argv is None:
            sigs.hold()
        elif restore is not None:
            restore()


if __name__ == "__main__":
    sys.exit(main())
